
use super::pretokenize::{for_name, split};

#[test]
fn dbg_split() {
    let (steps, _) = for_name(Some("smollm")).unwrap();
    eprintln!("{:?}", split("Hello world 123", &steps));
    let (steps, _) = for_name(Some("gpt-2")).unwrap();
    eprintln!("{:?}", split("Hello world 123", &steps));
}
