# orders %post: $1 is the number of orders packages installed after this one: 1 on
# install, 2 on upgrade. cargo-generate-rpm expands no macros, so this is the
# plain shell that %systemd_post would have become, except on upgrade: there
# the running instances roll to the new binary one at a time (orders rollout),
# where %systemd_postun_with_restart would restart them all at once.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
if [ "$1" -eq 1 ]; then
    systemctl --quiet --no-reload enable orders.socket orders.target
    if [ -d /run/systemd/system ]; then
        # Returns once every instance orders.target wants has started or failed
        # (a target is ordered after the units it wants).
        systemctl start orders.socket orders.target
        not_running=""
        for unit in $(systemctl show --property=Wants --value orders.target); do
            case "$unit" in
            orders@*.service)
                systemctl --quiet is-active "$unit" || not_running="$not_running $unit"
                ;;
            esac
        done
        if [ -n "$not_running" ]; then
            echo "orders: not running after install:$not_running (see: journalctl -u 'orders@*')" >&2
            exit 1
        fi
    fi
elif [ -d /run/systemd/system ]; then
    # One instance at a time, each waiting for READY=1; stops with an error
    # at the first that fails, leaving the rest on the old version.
    orders rollout --if-running
fi
