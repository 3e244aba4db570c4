// Whatever it would hold, an `Internal` for a connection cannot be built outside the crate.
use sshvisor_actors::connection::Internal;
use sshvisor_actors::ConnectionMsg;

fn forge<T>(anything: T) -> ConnectionMsg {
    ConnectionMsg::Internal(Internal(anything))
}

fn main() {}
