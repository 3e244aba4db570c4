// Whatever it would hold, an `Internal` for a session cannot be built outside the crate.
use sshvisor_actors::session::Internal;
use sshvisor_actors::SessionMsg;

fn forge<T>(anything: T) -> SessionMsg {
    SessionMsg::Internal(Internal(anything))
}

fn main() {}
