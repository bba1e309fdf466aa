# Point chef's hard-coded prefix (/opt/cinc, /opt/chef) at the toolchain lent on the
# scratch tmpfs, and take the link away again before commit, leaving the folder as the
# parent image had it: a mount point there would stay in the layer as an empty folder.
#   link FOLDER TARGET   prints how the folder was: absent | absent-parent | empty:MODE:UID:GID
#   unlink FOLDER HOW
# Exit 3: the parent image has something of its own at FOLDER.
set -eu
action=$1
folder=$2
parent=${folder%/*}
case $action in
link)
    if [ -L "$folder" ] || { [ -e "$folder" ] && [ ! -d "$folder" ]; }; then
        echo "$folder exists in the parent image and is not a folder" >&2
        exit 3
    fi
    if [ -d "$folder" ]; then
        if [ -n "$(ls -A "$folder")" ]; then
            echo "$folder is not empty in the parent image" >&2
            exit 3
        fi
        how="empty:$(stat -c '%a:%u:%g' "$folder")"
        rmdir "$folder"
    elif [ -d "$parent" ]; then
        how=absent
    else
        mkdir -p "$parent"
        how=absent-parent
    fi
    ln -s "$3" "$folder"
    echo "$how"
    ;;
unlink)
    how=$3
    [ -L "$folder" ] && rm -f "$folder"
    case $how in
    empty:*)
        IFS=: read -r _ mode uid gid <<END
$how
END
        mkdir "$folder"
        chmod "$mode" "$folder"
        chown "$uid:$gid" "$folder"
        ;;
    absent-parent)
        # A role may have put something of its own there since.
        rmdir "$parent" 2>/dev/null || true
        ;;
    esac
    ;;
esac
