// A notice to the supervisor (what a child tells it) cannot be built from outside.
use sshvisor_actors::notice::Notice;
use sshvisor_actors::SupervisorMsg;

fn forge(anything: ()) -> SupervisorMsg {
    SupervisorMsg::Notice(Notice(anything))
}

fn main() {}
