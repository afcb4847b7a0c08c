//! The JSON Schema of lab files (`schema/lab.schema.json`) is generated from the raw types.
//! This test fails when the checked-in file is stale, and rewrites it: commit the new file.

use kobako_lab::spec;
use std::path::PathBuf;

fn check(file: &str, want: String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        panic!(
            "{} was stale and has been regenerated: review and commit it",
            path.display()
        );
    }
}

#[test]
fn schema_files_are_current() {
    check("schema/lab.schema.json", spec::json_schema());
    check("schema/template.schema.json", spec::template_json_schema());
}

#[test]
fn schema_knows_the_lab_keys() {
    let v: serde_json::Value = serde_json::from_str(&spec::json_schema()).unwrap();
    let props = v["properties"].as_object().unwrap();
    for k in [
        "name",
        "defaults",
        "templates",
        "nodes",
        "networks",
        "links",
        "uplink",
        "publish",
        "copies",
    ] {
        assert!(props.contains_key(k), "schema lacks {k}");
    }
    assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false));
    let text = spec::json_schema();
    assert!(text.contains("\"Size\""), "sizes have their own definition");
}
