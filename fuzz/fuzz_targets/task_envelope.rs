//! The task envelope decoder (`Task::decode`): arbitrary bytes give a task
//! or a `CodecError`, never a panic, and a decoded task survives an
//! encode/decode round trip unchanged.
#![no_main]

use agentscale_core::Task;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(task) = Task::decode(input) {
        let bytes = task.encode().expect("a decoded task encodes");
        let again = Task::decode(&bytes).expect("an encoded task decodes");
        assert_eq!(again, task);
    }
});
