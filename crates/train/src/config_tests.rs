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
fn packing_strategy_and_loss_scaling_parse_by_their_toml_names_and_refuse_bad_values() {
    let text = TINY_TOML.replace(
        "seed = 42\n\n[training]",
        "seed = 42\npacking = true\npacking_strategy = \"first_fit\"\n\n[training]",
    ) + "\n[training.loss_scaling]\ninit_scale = 1024.0\n";
    let c = RunConfig::from_toml_str(&text, "s.toml").unwrap();
    assert_eq!(
        c.data.packing_strategy,
        Some(qtune_data::PackStrategy::FirstFit)
    );
    let ls = c.training.loss_scaling.as_ref().unwrap();
    assert_eq!((ls.init_scale, ls.growth_interval), (1024.0, 2000));
    // Unset fields stay out of the serialized config (earlier checkpoints compare equal).
    let json = serde_json::to_value(RunConfig::tiny()).unwrap();
    assert!(json["data"].get("packing_strategy").is_none());
    assert!(json["training"].get("loss_scaling").is_none());
    // An unknown strategy lists the accepted ones; a bad scale names its field.
    let bad = text.replace("\"first_fit\"", "\"wrapped\"");
    let err = RunConfig::from_toml_str(&bad, "s.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bfd") && err.contains("first_fit"), "{err}");
    let bad = text.replace("init_scale = 1024.0", "init_scale = 1000.0");
    let err = RunConfig::from_toml_str(&bad, "s.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("training.loss_scaling.init_scale"), "{err}");
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

/// The tiny config with `[data]` made custom (`data` lines after `dataset`) and `training`
/// lines appended to `[training]`.
fn custom_toml(data: &str, training: &str) -> String {
    TINY_TOML
        .replace(
            "dataset = \"squad_v2\"",
            &format!("dataset = \"custom\"\n{data}"),
        )
        .replace("[training]\n", &format!("[training]\n{training}\n"))
}

fn refused(text: &str, field: &str, also: &[&str]) {
    let err = RunConfig::from_toml_str(text, "c.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    for a in also {
        assert!(err.contains(a), "{field} / {a}: {err}");
    }
}

#[test]
fn hub_split_and_revision_parse_and_are_checked() {
    let c = RunConfig::from_toml_str(
        &custom_toml(
            "path = \"org/name\"\nsplit = \"train_sft\"\nrevision = \"v1\"\nconfig_name = \"en\"\ndataset_format = \"messages\"",
            "",
        ),
        "c.toml",
    )
    .unwrap();
    assert_eq!(
        (
            c.data.split.as_deref(),
            c.data.revision.as_deref(),
            c.data.config_name.as_deref()
        ),
        (Some("train_sft"), Some("v1"), Some("en"))
    );
    // A file has no splits, revisions or configs.
    for key in [
        "split = \"test\"",
        "revision = \"main\"",
        "config_name = \"en\"",
    ] {
        let field = format!("data.{}", key.split(' ').next().unwrap());
        refused(
            &custom_toml(
                &format!("path = \"d.jsonl\"\n{key}\ndataset_format = \"text\""),
                "",
            ),
            &field,
            &["d.jsonl"],
        );
    }
    refused(
        &custom_toml(
            "path = \"org/name\"\nsplit = \"\"\ndataset_format = \"text\"",
            "",
        ),
        "data.split",
        &[],
    );
    refused(
        &custom_toml(
            "path = \"org/name\"\nconfig_name = \" \"\ndataset_format = \"text\"",
            "",
        ),
        "data.config_name",
        &[],
    );
    // Built-in tasks: refused like the other custom keys.
    for key in [
        "split = \"train\"",
        "revision = \"main\"",
        "config_name = \"en\"",
        "test_split = 0.1",
    ] {
        let text = TINY_TOML.replace("[data]\n", &format!("[data]\n{key}\n"));
        assert_ne!(text, TINY_TOML);
        let field = format!("data.{}", key.split(' ').next().unwrap());
        refused(&text, &field, &["custom"]);
    }
}

#[test]
fn test_split_and_test_file_are_checked() {
    let ok = |data: &str| {
        RunConfig::from_toml_str(
            &custom_toml(&format!("{data}\ndataset_format = \"completion\""), ""),
            "c.toml",
        )
        .unwrap()
    };
    let c = ok("path = \"d.jsonl\"\ntest_split = 0.1");
    assert_eq!(c.data.test_split, Some(0.1));
    let c = ok("path = \"d.jsonl\"\ntest_file = \"t.jsonl\"");
    assert_eq!(c.data.test_file.as_deref(), Some("t.jsonl"));
    // A folder or Hub id may be its own test source: its `test` split is other files.
    ok("path = \"org/name\"\ntest_file = \"org/name\"");
    // Serialized only when set (earlier checkpoints compare equal).
    let v = serde_json::to_value(&ok("path = \"d.jsonl\"").data).unwrap();
    assert!(
        v.get("test_split").is_none() && v.get("split").is_none(),
        "{v}"
    );
    let f = "dataset_format = \"completion\"";
    for (data, field, also) in [
        ("test_split = 0.0", "data.test_split", &["(0, 1)"][..]),
        ("test_split = 1.0", "data.test_split", &["(0, 1)"]),
        (
            "test_split = 0.1\ntest_file = \"t.jsonl\"",
            "data.test_split",
            &["not both"],
        ),
        ("test_file = \"d.jsonl\"", "data.test_file", &["data.path"]),
        (
            "validation_file = \"v.jsonl\"\ntest_file = \"v.jsonl\"",
            "data.test_file",
            &["data.validation_file"],
        ),
    ] {
        refused(
            &custom_toml(&format!("path = \"d.jsonl\"\n{data}\n{f}"), ""),
            field,
            also,
        );
    }
}

#[test]
fn metric_for_best_model_follows_hf_and_lists_valid_names() {
    let custom = |format: &str, training: &str| {
        custom_toml(
            &format!("path = \"d.jsonl\"\ndataset_format = \"{format}\""),
            training,
        )
    };
    // Default: eval_loss, lower is better.
    let c = RunConfig::from_toml_str(&custom("completion", ""), "c.toml").unwrap();
    let best = c.best_metric();
    assert_eq!(
        (best.name.as_str(), best.greater_is_better),
        ("eval_loss", false)
    );
    assert!(best.improves(1.0, Some(2.0)) && !best.improves(2.0, Some(1.0)));
    assert!(best.improves(5.0, None));
    // HF accepts the name without `eval_`; not a loss: higher is better.
    let c = RunConfig::from_toml_str(
        &custom(
            "completion",
            "eval_generate_samples = 8\nmetric_for_best_model = \"exact_match\"",
        ),
        "c.toml",
    )
    .unwrap();
    let best = c.best_metric();
    assert_eq!(
        (
            best.name.as_str(),
            best.greater_is_better,
            best.generation_key()
        ),
        ("eval_exact_match", true, Some("exact_match"))
    );
    assert!(best.improves(50.0, Some(25.0)) && !best.improves(25.0, Some(25.0)));
    assert_eq!(c.training.eval_generate_samples, 8);
    // The built-in tasks' names.
    let squad = RunConfig::from_toml_str(
        &TINY_TOML.replace(
            "[training]\n",
            "[training]\neval_generate_samples = 4\nmetric_for_best_model = \"eval_f1\"\n",
        ),
        "c.toml",
    )
    .unwrap();
    assert_eq!(
        squad.eval_metric_names(),
        ["eval_loss", "eval_exact", "eval_f1"]
    );
    // Unknown names are refused naming the field and listing the valid ones.
    refused(
        &custom("completion", "metric_for_best_model = \"eval_bleu\""),
        "training.metric_for_best_model",
        &["eval_bleu", "eval_loss, eval_exact_match"],
    );
    refused(
        &custom("text", "metric_for_best_model = \"eval_exact_match\""),
        "training.metric_for_best_model",
        &["valid names: eval_loss"],
    );
    // A generation metric needs generations at each evaluation.
    refused(
        &custom("completion", "metric_for_best_model = \"eval_exact_match\""),
        "training.metric_for_best_model",
        &["eval_generate_samples"],
    );
    // Text data has no generation metric.
    refused(
        &custom("text", "eval_generate_samples = 4"),
        "training.eval_generate_samples",
        &["text"],
    );
}
