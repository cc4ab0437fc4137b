# Runs @@TARGET_COMMENT@@ in the image: arguments, stdin, stdout and the exit status pass through untouched.
exec @@HPCCONT@@ exec@@EXEC_OPTS@@ "$image" @@TARGET@@ "$@"
