// The kinds of notice are not even nameable: no forged end of a session.
use sshvisor_actors::notice::NoticeKind;

fn main() {
    let _ = NoticeKind::LoginTimer;
}
