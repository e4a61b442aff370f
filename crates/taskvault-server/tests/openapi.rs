//! `docs/openapi.json` is the document the server serves, generated from the handlers: this
//! fails when a handler changed and the copy did not (`UPDATE_OPENAPI=1` rewrites it).

#[test]
fn docs_openapi_json_is_the_served_document() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = taskvault_server::openapi().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p taskvault-server --test openapi`"
    );
}

#[test]
fn every_route_is_documented_with_its_errors() {
    let doc = serde_json::to_value(taskvault_server::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/healthz",
        "/v1/ns/{ns}/entries/{key}",
        "/v1/ns/{ns}/blobs/missing",
        "/v1/ns/{ns}/blobs/{digest}",
        "/v1/ns/{ns}/claims/{key}",
        "/v1/ns/{ns}/claims/{key}/{lease}",
    ] {
        assert!(paths.contains_key(p), "{p} is not in the document");
    }
    for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
        for (method, op) in ops.as_object().unwrap() {
            for status in ["401", "403"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path} lacks {status}");
            }
            // A path that carries values can be malformed.
            if path.contains('{') {
                assert!(op["responses"].get("400").is_some(), "{method} {path} lacks 400");
            }
        }
    }
}
