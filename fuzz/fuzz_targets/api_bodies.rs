//! Arbitrary bytes as API request bodies and query values: parsing and
//! validation must refuse bad input with an error, never panic.
#![no_main]

use hearth_server::api::model::{CreateSandboxRequest, ExecRequestBody, MkdirRequest, TimeoutRequest};
use hearth_server::api::validate::{create_spec, exec_spec, validate_guest_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<CreateSandboxRequest>(data) {
        let _ = create_spec(request, Default::default());
    }
    if let Ok(body) = serde_json::from_slice::<ExecRequestBody>(data) {
        let _ = exec_spec(body);
    }
    if let Ok(request) = serde_json::from_slice::<TimeoutRequest>(data) {
        let _ = request.timeout.parse("timeout");
    }
    if let Ok(request) = serde_json::from_slice::<MkdirRequest>(data) {
        let _ = validate_guest_path("path", &request.path);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = validate_guest_path("path", text);
    }
});
