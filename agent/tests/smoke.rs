mod common;
use common::*;

#[test]
fn echo_runs_and_exits_zero() {
    if !can_run("echo_runs_and_exits_zero") {
        return;
    }
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", &[], &["echo", "hello"]);
    let (status, out, err) = agent.run("c1", spec, None);
    assert_eq!(status, 0, "stderr: {}", text(&err));
    assert_eq!(text(&out), "hello\n");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}
