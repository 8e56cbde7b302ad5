#!/usr/bin/env bash
# The guide's database/backup-restore.sh, as a thin shim over stackops (see README "The guide's scripts").
#   backup                  -> invoke backup          (database + globals + uploads, one point in time)
#   backup_db               -> invoke backup.db
#   list                    -> invoke backup.list
#   restore_db FILE|BACKUP  -> invoke restore.db ...  (an old database_backup_*.sql.gz file, or a backup set)
# The guide's placeholder names are accepted: backups/database_backup_LATEST.sql.gz and
# backups/database_backup_TIMESTAMP.sql.gz (the newest backup),
# backups/pre_migration_TIMESTAMP.sql.gz (the newest pre-migration backup), and backups/test_backup.sql.gz
# ("Test backup integrity": invoke backup.verify --latest, which restores into a scratch database instead
# of over the live one). Extra arguments go to the task (e.g. --yes, --dry-run). STACKOPS_ENV=prod picks prod.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_stackops.sh"

usage() {
    echo "usage: $0 backup | backup_db | list | restore_db FILE_OR_BACKUP [--yes] [--dry-run]" >&2
    exit 2
}

ref_for() {  # the guide's file name -> what restore.db takes
    local given="$1" name
    if [ -e "$given" ]; then
        printf '%s\n' "$given"
        return
    fi
    name="$(basename "$given")"
    name="${name%.sql.gz}"
    case "$name" in
        *_LATEST | database_backup_TIMESTAMP) echo latest ;;
        pre_migration_TIMESTAMP)
            stackops backup.list --json | "${STACKOPS_PYTHON:-python3}" -c \
                'import json,sys; ids=[b["id"] for b in json.load(sys.stdin) if b.get("kind")=="pre_migration"]; print(ids[0] if ids else "pre_migration_TIMESTAMP")' ;;
        *) printf '%s\n' "$name" ;;
    esac
}

[ $# -ge 1 ] || usage
command="$1"
shift
case "$command" in
    backup) stackops backup "$@" ;;
    backup_db) stackops backup.db "$@" ;;
    list) stackops backup.list "$@" ;;
    restore_db)
        [ $# -ge 1 ] || usage
        file="$1"
        shift
        if [ "$(basename "$file")" = "test_backup.sql.gz" ] && [ ! -e "$file" ]; then
            stackops backup.verify --latest
        else
            stackops restore.db "$(ref_for "$file")" "$@"
        fi ;;
    *) usage ;;
esac
