"""Slurm: what the SPANK plugin (spank_plugin/) runs, split by job.

  plugin.py      what the plugin hands over (plugstack arguments, step id, options)
  task.py        task policy: what each task of a containered step runs
  recipe.py      the step's container, prepared once per node, and the recipe tasks enter in C
  accounting.py  the per-node accounting entry of each step, written as root
  queue.py       queue queries

The names below are the package's interface (the ``hpccont slurm`` commands and tests use them).
"""
from .plugin import (IMAGE_OPTION, PLUGSTACK_DEFAULTS, SPECIAL_STEPS, STEP_KINDS,  # noqa: F401
                     JobIdentity, PluginArgs, StepId, parse_identity, parse_plugin_args,
                     parse_spank_options, parse_step)
from .task import (CWD_VAR, PMIX_ALIASES, STEP_DIR_VARS, STEP_VAR, TaskPlan,  # noqa: F401
                   find_image, image_kind, job_options, plan_task, run_task,
                   search_dirs, skip_reason, step_binds, step_env, tasks_on_this_node)
from .recipe import (RECIPE_TAGS, Recipe, parse_recipe, prepare_step, recipe_bytes,  # noqa: F401
                     run_prepare)
from .accounting import (ACCOUNTING_ENV, AccountingEntry, admin_comment, append_entry,  # noqa: F401
                         file_digest, locate_image, make_entry, read_entries, accounting_environ,
                         run_account)
from .queue import queue_jobs  # noqa: F401
