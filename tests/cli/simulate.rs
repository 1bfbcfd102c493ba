use super::expect_success;

#[test]
fn simulate_says_plainly_that_it_is_not_built_yet() {
    let out = expect_success(&["simulate"]);
    assert!(out.contains("not built yet"), "{out}");
    assert!(out.contains("embedded default scenario"), "{out}");
}
