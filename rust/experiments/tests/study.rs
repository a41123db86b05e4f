//! `tokenizer-study` end to end on the Debian FAQ (Korean + English): each language's own
//! tokenizer compresses its own held-out text best, a bigger vocabulary compresses more, and
//! the table and JSON agree.

use std::path::Path;
use std::process::Command;

fn spec(faq: &Path) -> String {
    let faq = faq.display();
    format!(
        "held_out_every = 4\n\
         [[source]]\nname = \"en\"\npaths = [\"{faq}\"]\nsuffix = \".en.html\"\n\
         [[source]]\nname = \"ko\"\npaths = [\"{faq}/ko\"]\nsuffix = \".ko.html\"\n\
         [[variant]]\nname = \"en-only\"\nvocab_size = 800\nmix = {{ en = 1.0 }}\n\
         [[variant]]\nname = \"ko-only\"\nvocab_size = 800\nmix = {{ ko = 1.0 }}\n\
         [[variant]]\nname = \"mix-800\"\nvocab_size = 800\nmix = {{ en = 1.0, ko = 1.0 }}\n\
         [[variant]]\nname = \"mix-1600\"\nvocab_size = 1600\nmix = {{ en = 1.0, ko = 1.0 }}\n"
    )
}

#[test]
fn debian_faq_study_ranks_tokenizers_by_their_languages() {
    let faq = kormo_testdeps::debian_faq();
    let dir = kormo_testdeps::test_dir("tokenizer_study");
    let spec_path = dir.join("study.toml");
    std::fs::write(&spec_path, spec(&faq)).unwrap();
    let out = dir.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_tokenizer-study"))
        .arg(&spec_path)
        .arg("--out")
        .arg(&out)
        .args(["--threads", "2"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("study.json")).unwrap()).unwrap();
    let bpt = |v: usize, s: &str| json["variants"][v]["bpt"][s].as_f64().unwrap();
    assert!(bpt(0, "en") > bpt(1, "en"), "en-only beats ko-only on English: {json}");
    assert!(bpt(1, "ko") > bpt(0, "ko"), "ko-only beats en-only on Korean: {json}");
    for s in ["en", "ko"] {
        assert!(bpt(3, s) > bpt(2, s), "1600 tokens compress {s} more than 800: {json}");
        assert!(bpt(2, s) > 1.0);
    }
    let overlap = &json["overlap"];
    assert_eq!(overlap[0][0].as_f64(), Some(1.0));
    let en_ko = overlap[0][1].as_f64().unwrap();
    let mix = overlap[2][3].as_f64().unwrap();
    assert!(en_ko < mix, "one-language vocabularies share less than two sizes of one mix: {json}");
    let table = std::fs::read_to_string(out.join("study.md")).unwrap();
    assert_eq!(table, String::from_utf8(run.stdout).unwrap());
    assert!(table.contains(&format!("| mix-1600 | 1600 | en:1 ko:1 | {:.3} | {:.3} |", bpt(3, "en"), bpt(3, "ko"))), "{table}");
}
