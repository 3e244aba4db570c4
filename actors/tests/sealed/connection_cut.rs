// Cut and give-up are the connection's own timers, not a door.
use sshvisor_actors::connection::{Internal, Tick};
use sshvisor_actors::ConnectionMsg;

fn main() {
    let _ = ConnectionMsg::Internal(Internal(Tick::Cut));
    let _ = ConnectionMsg::GiveUp;
}
