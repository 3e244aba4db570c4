// Only the link's SessionEvents says a session's work is finished; give-up is a timer.
use sshvisor_actors::session::{Internal, Tick};
use sshvisor_actors::{SessionExit, SessionMsg};

fn main() {
    let _ = SessionMsg::Internal(Internal(Tick::Finished {
        exit: SessionExit::Closed,
        processes_left: 0,
    }));
    let _ = SessionMsg::Internal(Internal(Tick::GiveUp));
}
