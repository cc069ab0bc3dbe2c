//! Which split steps each `tokenizer.ggml.pre` value names. The regex
//! patterns are facts that must match llama.cpp's byte for byte: they are
//! reproduced from `llama-vocab.cpp` (`llm_tokenizer_bpe`) of the pinned
//! llama.cpp.

use super::*;

/// The split steps and options for a `tokenizer.ggml.pre` value (`None` when
/// the key is absent: llama.cpp's default). Unknown names are an error, as in
/// llama.cpp.
pub(crate) fn for_name(name: Option<&str>) -> Result<(Vec<Step>, PreOptions), TokenizerError> {
    let mut opts = PreOptions {
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
        no_default_bos: false,
    };
    let llama3 = || Step::Llama3 {
        max_digits: 3,
        marks: false,
    };
    let qwen2 = || Step::Llama3 {
        max_digits: 1,
        marks: false,
    };
    let name_str = name.unwrap_or("default");
    let steps: Vec<Step> = match name_str {
        "default" => regexes(&[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ])?,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => {
            opts.ignore_merges = true;
            opts.add_bos = true;
            vec![llama3()]
        }
        "dbrx" | "smaug-bpe" => vec![llama3()],
        "chatglm-bpe" | "glm4" | "glm5" => {
            opts.no_default_bos = true;
            opts.ignore_merges = name_str != "chatglm-bpe";
            vec![llama3()]
        }
        "deepseek-llm" => {
            opts.clean_spaces = false;
            // Some class members are written as escapes: they are not in
            // Unicode normal form C, and editors tend to normalise them.
            regexes(&[
                "[\r\n]",
                "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1F7D}ᾀ-ᾴᾶ-ᾼ\u{1FBE}ῂ-ῄῆ-ῌῐ-\u{1FD3}ῖ-\u{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
                "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
                "\\s+$",
                "[一-龥ࠀ-一가-퟿]+",
                r"\p{N}+",
            ])?
        }
        "deepseek-coder" => {
            opts.clean_spaces = false;
            regexes(&["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"])?
        }
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            opts.clean_spaces = false;
            regexes(&[
                r"\p{N}{1,3}",
                "[一-龥぀-ゟ゠-ヿ]+",
                "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
            ])?
        }
        "falcon" => regexes(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"])?,
        "mpt" | "olmo" | "jais" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat"
        | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" | "exaone4" => vec![Step::Gpt2],
        "trillion" | "granite-docling" => {
            opts.clean_spaces = false;
            vec![Step::Gpt2]
        }
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            regexes(&[r"\p{N}"])?.into_iter().chain([Step::Gpt2]).collect()
        }
        "smollm" | "command-r" => {
            opts.clean_spaces = false;
            regexes(&[r"\p{N}"])?.into_iter().chain([Step::Gpt2]).collect()
        }
        "stablelm2" | "megrez" => vec![qwen2()],
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
        | "grok-2" => {
            opts.clean_spaces = false;
            vec![qwen2()]
        }
        "qwen35" => {
            opts.clean_spaces = false;
            vec![Step::Llama3 {
                max_digits: 1,
                marks: true,
            }]
        }
        "poro-chat" | "bloom" | "gpt3-finnish" => {
            opts.clean_spaces = name_str != "poro-chat";
            regexes(&[" ?[^(\\s|.,!?…。，、।۔،)]+"])?
        }
        "viking" => {
            opts.clean_spaces = false;
            regexes(&[" ?[^(\\s|.,!?…。，、।۔،)]+", r"\p{N}"])?
        }
        "tekken" => {
            opts.clean_spaces = false;
            opts.ignore_merges = true;
            opts.add_bos = true;
            regexes(&["[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"])?
        }
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
            opts.clean_spaces = false;
            regexes(&["[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"])?
        }
        "chameleon" => {
            opts.add_bos = true;
            opts.clean_spaces = false;
            regexes(&[
                "<sentinel:[0-9]+>",
                "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                "([\\t\\n]|    |  )",
                r"\p{N}",
                r"[\p{P}!-/:-@\[-`{-~]",
                GPT2,
            ])?
        }
        "bailingmoe" | "bailingmoe2" | "llada-moe" => {
            opts.clean_spaces = false;
            regexes(&["'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"])?
        }
        "seed-coder" => {
            opts.clean_spaces = false;
            regexes(&["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"])?
        }
        "ufakzeka" => {
            opts.clean_spaces = false;
            regexes(&["[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"])?
        }
        "laguna" => {
            opts.clean_spaces = false;
            vec![Step::Newlines, qwen2()]
        }
        "exaone-moe" => {
            regexes(&["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"])?
        }
        "minicpm5" => {
            opts.ignore_merges = true;
            let mut steps = regexes(&[r"\p{N}{1,3}"])?;
            steps.extend(regexes(&["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"])?);
            steps
        }
        "youtu" => {
            opts.clean_spaces = false;
            opts.ignore_merges = true;
            regexes(&[
                "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
                "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
            ])?
        }
        other => {
            // Names llama.cpp knows but that need machinery of their own
            // (custom digit grouping, Han-aware scanners, raw-UTF-8 BPE).
            const NEEDS_CUSTOM: [&str; 12] = [
                "kimi-k2",
                "afmoe",
                "tiny_aya",
                "cohere2moe",
                "superbpe",
                "gemma4",
                "granite-embed-multi-311m",
                "mmbert",
                "sarvam-moe",
                "whitespace",
                "granite-embed-multi-97m",
                "jais-2",
            ];
            return Err(if NEEDS_CUSTOM.contains(&other) || other == "spark2_5" {
                TokenizerError::UnsupportedPreTokenizer(other.to_owned())
            } else {
                TokenizerError::UnknownPreTokenizer(other.to_owned())
            });
        }
    };
    Ok((steps, opts))
}
