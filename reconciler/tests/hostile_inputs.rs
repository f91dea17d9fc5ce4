//! Property tests for the cluster files `spilo validate` reads: whatever the bytes, validation
//! answers with diagnostics and never panics.
//!
//! `PROPTEST_CASES=100000 cargo test -p spilo --test hostile_inputs` runs a longer search.

use proptest::prelude::*;

const DEMO: &str = include_str!("../../clusters/demo.yaml");
const PROD: &str = include_str!("../../clusters/orders-prod.yaml");

fn mutated(valid: &'static str) -> impl Strategy<Value = String> {
    (
        0..valid.len(),
        0..16usize,
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(at, cut, bytes)| {
            let mut b = valid.as_bytes().to_vec();
            let end = (at + cut).min(b.len());
            b.splice(at..end, bytes);
            String::from_utf8_lossy(&b).into_owned()
        })
}

proptest! {
    // Schema compilation makes each case slow: 64 by default, PROPTEST_CASES for more.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn validation_never_panics(text in prop_oneof![mutated(DEMO), mutated(PROD), ".{0,300}"]) {
        let files = vec![("clusters/fuzz.yaml".to_string(), text)];
        let checked = spilo::spec::validate_files(&files);
        // Every diagnostic names the file it is about.
        for d in &checked.diagnostics {
            prop_assert!(d.file == "clusters/fuzz.yaml" || d.file == "(schema)", "{:?}", d);
        }
    }
}
