#!/usr/bin/env bash
# The guide's database/migration-workflow.sh, as a thin shim over stackops.
#   create NAME   -> invoke migrate.create NAME
#   apply FILE    -> invoke migrate.apply --path FILE  (the guide's migrations/YYYYMMDD_name.sql names the
#                    file `create NAME` made, e.g. migrations/20240618_add_new_feature.sql)
#   apply         -> invoke migrate.apply              (every pending migration)
#   check         -> invoke migrate.check              (database integrity)
#   rollback      -> invoke migrate.rollback           (the last batch; --restore for its backup)
#   status        -> invoke migrate.status
# Extra arguments go to the task (--yes, --dry-run, --strict). STACKOPS_ENV=prod picks prod.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_stackops.sh"

usage() {
    echo "usage: $0 create NAME | apply [FILE] | check | rollback | status" >&2
    exit 2
}

[ $# -ge 1 ] || usage
command="$1"
shift
case "$command" in
    create)
        [ $# -ge 1 ] || usage
        stackops migrate.create "$@" ;;
    apply)
        if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
            file="$1"
            shift
            stackops migrate.apply --path "$file" "$@"
        else
            stackops migrate.apply "$@"
        fi ;;
    check) stackops migrate.check "$@" ;;
    rollback) stackops migrate.rollback "$@" ;;
    status) stackops migrate.status "$@" ;;
    *) usage ;;
esac
