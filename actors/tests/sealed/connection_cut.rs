// Cut and give-up are the connection's own timers, not a door: neither the wrapper nor what it
// says can be built outside the crate.
use sshvisor_actors::connection::{Inner, Internal, Tick};
use sshvisor_actors::ConnectionMsg;

fn main() {
    let _ = ConnectionMsg::Internal(Internal(Inner::Tick(Tick::Cut)));
    let _ = ConnectionMsg::Internal(Internal(Inner::Tick(Tick::GiveUp)));
}
