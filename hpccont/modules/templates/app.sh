# Runs the image's SCIF app @@APP_COMMENT@@: arguments, stdin, stdout and the exit status pass through untouched.
exec @@HPCCONT@@ run --app @@APP@@@@EXEC_OPTS@@ "$image" "$@"
