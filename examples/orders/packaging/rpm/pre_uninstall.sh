# orders %preun: $1 is 0 on erase, 1 when an upgrade removes the old package.
# On erase, stop the socket and then the instances, each draining; on
# upgrade, nothing (%post of the new package rolls the instances).
set -e
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        # The socket first: with it stopped, a late connection cannot start
        # orders@1 again. The instances keep their copy of it until they drain.
        systemctl stop orders.socket
        systemctl stop orders.target 'orders@*.service'
    fi
    systemctl --quiet --no-reload disable orders.socket orders.target
fi
