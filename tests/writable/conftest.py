"""Fixtures of the writable-container tests."""
import os

import pytest


@pytest.fixture
def user_dir(shared_tmp, test_user):
    d = shared_tmp / "u"
    d.mkdir()
    os.chown(d, test_user.pw_uid, test_user.pw_gid)
    return d
