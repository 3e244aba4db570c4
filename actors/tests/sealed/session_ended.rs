// No forged end of a session: a notice with its kind cannot be built outside the crate, nor
// can the kind or what it carries.
use sshvisor_actors::notice::{Notice, NoticeKind, SessionEnd};
use sshvisor_actors::{ConnId, SessionExit, SessionId, SupervisorMsg};

fn main() {
    let _ = SupervisorMsg::Notice(Notice(NoticeKind::SessionEnded(SessionEnd {
        conn: ConnId::new_random(),
        session: SessionId::new_random(),
        exit: SessionExit::Closed,
        killed: None,
        forced: false,
        processes_left: 0,
    })));
    let _ = SupervisorMsg::Notice(Notice(NoticeKind::LoginTimer));
}
