//! Unit tests of `config` (included from config.rs).
use super::*;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn tiny_config_parses() {
    let c = RunConfig::tiny();
    assert!(c.model.random.is_some());
    assert_eq!(c.model.random.as_ref().unwrap().vocab_size, 50400);
}

#[test]
fn shipped_configs_parse_with_the_issue_hyperparameters() {
    for (file, task) in [
        ("squad.toml", Task::SquadV2),
        ("hate_speech.toml", Task::HateSpeech),
    ] {
        let c = RunConfig::from_file(&configs_dir().join(file)).unwrap();
        assert_eq!(c.model.name_or_path.as_deref(), Some("EleutherAI/gpt-j-6b"));
        assert!(c.model.quantization.is_some());
        assert_eq!(
            (c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout),
            (16, 32.0, 0.05)
        );
        assert_eq!(
            c.lora.target_modules,
            TargetList::Names(vec!["q_proj".into(), "v_proj".into()])
        );
        assert_eq!(c.training.per_device_train_batch_size, 8);
        assert_eq!(c.training.learning_rate, 2e-4);
        assert_eq!(c.data.dataset, task);
    }
}

#[test]
fn distributed_section_parses_and_is_checked() {
    let section = "\n[distributed]\nnum_nodes = 2\nnode_rank = 1\n\
                   orchestrator = \"ws://10.0.0.1:3000\"\n\
                   node_address = \"ws://10.0.0.2:3001\"\ndata_service_port = 3001\n";
    let c = RunConfig::from_toml_str(&format!("{TINY_TOML}{section}"), "d.toml").unwrap();
    let d = c.distributed.as_ref().unwrap();
    assert_eq!(
        (d.num_nodes, d.node_rank, d.data_service_port),
        (2, 1, 3001)
    );
    // A config without the section serializes without it (old checkpoints compare equal).
    let json = serde_json::to_value(RunConfig::tiny()).unwrap();
    assert!(json.get("distributed").is_none());
    let bad = format!(
        "{TINY_TOML}{}",
        section.replace("node_rank = 1", "node_rank = 2")
    );
    let err = RunConfig::from_toml_str(&bad, "d.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("distributed.node_rank"), "{err}");
    let bad = format!(
        "{TINY_TOML}{}",
        section.replace("ws://10.0.0.1", "10.0.0.1")
    );
    let err = RunConfig::from_toml_str(&bad, "d.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("distributed.orchestrator"), "{err}");
}

#[test]
fn packing_defaults_off_and_serializes_only_when_on() {
    assert!(!RunConfig::tiny().data.packing);
    let text = TINY_TOML.replace(
        "seed = 42\n\n[training]",
        "seed = 42\npacking = true\n\n[training]",
    );
    let c = RunConfig::from_toml_str(&text, "p.toml").unwrap();
    assert!(c.data.packing);
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["data"]["packing"], serde_json::Value::Bool(true));
    let json = serde_json::to_value(RunConfig::tiny()).unwrap();
    assert!(json["data"].get("packing").is_none());
}

#[test]
fn custom_data_configs_parse() {
    let c = RunConfig::from_file(&configs_dir().join("custom-completion.toml")).unwrap();
    assert_eq!(c.data.dataset, Task::Custom);
    assert_eq!(c.data.dataset_format, Some(DatasetFormat::Completion));
    assert_eq!(c.data.validation_split, Some(0.05));
    assert!(c.model.random.is_some());
    let c = RunConfig::from_file(&configs_dir().join("custom-chat.toml")).unwrap();
    assert_eq!(c.data.dataset_format, Some(DatasetFormat::Messages));
    assert!(c.model.name_or_path.as_deref().unwrap().ends_with(".gguf"));
    // A built-in task's config serializes without the custom keys (checkpoints compare
    // equal to those written before they existed).
    let json = serde_json::to_value(RunConfig::tiny()).unwrap();
    let data = json["data"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys.len(),
        5,
        "dataset, max_length, max_train_samples, max_eval_samples, seed: {keys:?}"
    );
}

#[test]
fn unknown_dataset_and_format_list_the_accepted_values() {
    let err = RunConfig::from_toml_str(
        &TINY_TOML.replace("dataset = \"squad_v2\"", "dataset = \"mydata\""),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    for v in ["mydata", "squad_v2", "hate_speech", "custom"] {
        assert!(err.contains(v), "{err}");
    }
    let custom = |extra: &str| {
        TINY_TOML.replace(
            "dataset = \"squad_v2\"",
            &format!("dataset = \"custom\"\npath = \"d.jsonl\"\n{extra}"),
        )
    };
    let err = RunConfig::from_toml_str(&custom("dataset_format = \"chat\""), "x.toml")
        .unwrap_err()
        .to_string();
    for v in ["chat", "text", "completion", "alpaca", "messages"] {
        assert!(err.contains(v), "{err}");
    }
    // No silent default format.
    let err = RunConfig::from_toml_str(&custom(""), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.dataset_format") && err.contains("alpaca"),
        "{err}"
    );
    assert!(RunConfig::from_toml_str(&custom("dataset_format = \"alpaca\""), "x.toml").is_ok());
    // Keys that do not fit the dataset or the format are refused, naming them.
    for (toml, field) in [
        (
            TINY_TOML.replace(
                "seed = 42\n\n[training]",
                "seed = 42\npath = \"x.jsonl\"\n\n[training]",
            ),
            "data.path",
        ),
        (
            custom("dataset_format = \"completion\"\nchat_template = \"{{ x }}\""),
            "data.chat_template",
        ),
        (
            custom("dataset_format = \"text\"\nvalidation_split = 1.5"),
            "data.validation_split",
        ),
        (
            custom(
                "dataset_format = \"text\"\nvalidation_split = 0.1\nvalidation_file = \"v.jsonl\"",
            ),
            "data.validation_split",
        ),
        (
            custom("dataset_format = \"alpaca\"\nprompt_field = \"q\""),
            "data.prompt_field",
        ),
    ] {
        let err = RunConfig::from_toml_str(&toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{field}: {err}");
    }
    let err = RunConfig::from_toml_str(
        &TINY_TOML.replace(
            "dataset = \"squad_v2\"",
            "dataset = \"custom\"\ndataset_format = \"text\"",
        ),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("data.path"), "{err}");
}

#[test]
fn optim_accepts_hf_spellings_and_lists_them_on_error() {
    for (name, want) in [
        ("adamw_torch", OptimName::AdamwTorch),
        ("adamw_bnb_8bit", OptimName::AdamwBnb8bit),
        ("adamw_bnb8bit", OptimName::AdamwBnb8bit),
        ("paged_adamw_8bit", OptimName::PagedAdamw8bit),
    ] {
        let text = TINY_TOML.replace("optim = \"adamw_torch\"", &format!("optim = \"{name}\""));
        assert!(text.contains(name));
        let c = RunConfig::from_toml_str(&text, "o.toml").unwrap();
        assert_eq!(c.training.optim, want, "{name}");
        // Written back as HF's name, read back the same.
        let back: RunConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back.training.optim, want);
    }
    let text = TINY_TOML.replace("optim = \"adamw_torch\"", "optim = \"sgd\"");
    let err = RunConfig::from_toml_str(&text, "o.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sgd") && err.contains("adamw_bnb_8bit") && err.contains("paged_adamw_8bit"),
        "{err}"
    );
}

#[test]
fn zero_samples_name_the_setting() {
    for (field, line) in [
        ("max_train_samples", "max_train_samples = 2000"),
        ("max_eval_samples", "max_eval_samples = 32"),
    ] {
        let text = TINY_TOML.replace(line, &format!("{field} = 0"));
        assert_ne!(text, TINY_TOML);
        let err = RunConfig::from_toml_str(&text, "z.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("data.{field}")), "{err}");
    }
}

#[test]
fn bad_configs_name_the_field() {
    let base = TINY_TOML.to_string();
    let err = RunConfig::from_toml_str(&base.replace("r = ", "rank = "), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.toml") && err.contains("rank"), "{err}");
    let err = RunConfig::from_toml_str(&base.replace("max_steps = ", "max_steps = 0 # "), "y.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("training.max_steps"), "{err}");
}
