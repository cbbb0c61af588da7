use qtune_data::load_wikitext_raw;
use qtune_data::wikitext::join_rows;

use crate::common::data_dir;

#[test]
fn rows_are_joined_like_hf() {
    // HF: "\n\n".join(["a\n", "b\n"]) == "a\n\n\nb\n".
    assert_eq!(
        join_rows(" = A = \r\n B c .\r\n\r\n"),
        " = A = \n\n\n B c .\n"
    );
    assert_eq!(join_rows(""), "");
}

#[test]
fn real_test_text() {
    let Some(data) = data_dir("real_test_text") else {
        return;
    };
    let text = load_wikitext_raw(&data.join("wikitext-2/wiki.test.raw")).unwrap();
    assert!(!text.contains('\r'));
    assert!(text.starts_with(" = Robert Boulter = \n\n\n Robert Boulter is an English"));
    assert_eq!(
        text.matches("\n\n\n").count(),
        2_890,
        "2,891 rows, 2,890 separators"
    );
}
