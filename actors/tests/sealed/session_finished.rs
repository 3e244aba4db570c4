// Only the link's SessionEvents says a session's work is finished; give-up is a timer.
use sshvisor_actors::SessionMsg;

fn main() {
    let _ = SessionMsg::Finished {
        exit: sshvisor_actors::SessionExit::Closed,
        processes_left: 0,
    };
    let _ = SessionMsg::GiveUp;
}
