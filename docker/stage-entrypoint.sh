#!/bin/sh
# Entrypoint of the GPU image: runs one pipeline stage.
#   crediflow-stage finetune [args]            ->  python -m tasks.finetune [args]
#   crediflow-stage python -m tasks.finetune   ->  run as given (any other command too)
set -e

if [ "$#" -eq 0 ]; then
    echo "usage: <stage> [args...]  or  python -m tasks.<stage> [args...]" >&2
    exit 2
fi

case "$1" in
    *[!A-Za-z0-9_]*) ;;  # not a bare module name: run the command as given
    *)
        if [ -f "tasks/$1.py" ] || [ -f "tasks/$1/__init__.py" ]; then
            stage="$1"
            shift
            exec python -m "tasks.${stage}" "$@"
        fi
        ;;
esac

exec "$@"
