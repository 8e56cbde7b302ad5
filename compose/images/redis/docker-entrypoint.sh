#!/bin/bash
# Entrypoint of the offline redis:7 stand-in; follows the official image's behaviour.
set -Eeuo pipefail

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = 'redis-server' ]; then
	case " $* " in
		*protected-mode*) ;;
		*) set -- "$@" --protected-mode no ;;
	esac
	if [ "$(id -u)" = '0' ]; then
		find . \! -user redis -exec chown redis:redis '{}' +
		exec setpriv --reuid=redis --regid=redis --init-groups "$BASH_SOURCE" "$@"
	fi
fi

exec "$@"
