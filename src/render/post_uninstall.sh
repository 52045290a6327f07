# {{name}} %postun: $1 is 0 on erase. The unit files are gone; tell systemd.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    # cargo-generate-rpm packages files, not the directories holding them,
    # so rpm leaves these behind. A modified settings file was kept as
    # {{name}}.toml.rpmsave (rpm says so), and then /etc/{{name}} stays with it.
    # Deepest first; only those the package's files left.
    for dir in /etc/{{name}} /usr/share/doc/{{name}}/examples /usr/share/doc/{{name}} \
        /usr/share/licenses/{{name}}; do
        if [ -d "$dir" ]; then
            rmdir --ignore-fail-on-non-empty "$dir"
        fi
    done
fi
