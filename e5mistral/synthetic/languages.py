"""The XLM-R language list, sampling weights and seeded language sampling.

The recipe draws the language of every synthetic example from the ~100 languages XLM-R was
trained on, weighted towards high-resource languages. The paper does not publish the weights;
it reports that English ended up 43.1% of the data, the next 13 languages about 2.7-3.0% each
and the rest shared the remainder. :data:`DEFAULT_WEIGHTS` reproduces that shape: English 43,
13 high-resource languages 2.85 each, every other language 0.25.

Example:
    >>> import random
    >>> weights = parse_language_weights("en:3,de,fr")
    >>> weights["en"] > weights["de"]
    True
    >>> sample_language(random.Random(0), weights) in {"en", "de", "fr"}
    True
"""

from __future__ import annotations

import random
from collections.abc import Mapping

# code -> English name, the XLM-R (CC-100) list; the names go into the prompts.
# fmt: off
XLMR_LANGUAGES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bn_rom": "Bengali (romanized)",
    "br": "Breton", "bs": "Bosnian", "ca": "Catalan", "cs": "Czech", "cy": "Welsh",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto",
    "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "fy": "Western Frisian", "ga": "Irish", "gd": "Scottish Gaelic",
    "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew", "hi": "Hindi",
    "hi_rom": "Hindi (romanized)", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "ku": "Kurdish (Kurmanji)", "ky": "Kyrgyz", "la": "Latin", "lo": "Lao", "lt": "Lithuanian",
    "lv": "Latvian", "mg": "Malagasy", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian",
    "mr": "Marathi", "ms": "Malay", "my": "Burmese", "my_zaw": "Burmese (Zawgyi)",
    "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "om": "Oromo", "or": "Odia",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sa": "Sanskrit", "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak",
    "sl": "Slovenian", "so": "Somali", "sq": "Albanian", "sr": "Serbian", "su": "Sundanese",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "ta_rom": "Tamil (romanized)",
    "te": "Telugu", "te_rom": "Telugu (romanized)", "th": "Thai", "tl": "Filipino",
    "tr": "Turkish", "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu",
    "ur_rom": "Urdu (romanized)", "uz": "Uzbek", "vi": "Vietnamese", "xh": "Xhosa",
    "yi": "Yiddish", "zh": "Chinese (Simplified)", "zh_hant": "Chinese (Traditional)",
}

# Our choice of the 13 languages that follow English (the paper does not name them).
HIGH_RESOURCE: tuple[str, ...] = (
    "de", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "zh", "ar", "tr",
)

# fmt: on

DEFAULT_WEIGHTS: dict[str, float] = {
    code: 43.0 if code == "en" else 2.85 if code in HIGH_RESOURCE else 0.25 for code in XLMR_LANGUAGES
}


def language_name(code: str) -> str:
    """English name of a language code, for prompts.

    Example:
        >>> language_name("de")
        'German'
    """
    try:
        return XLMR_LANGUAGES[code]
    except KeyError:
        raise ValueError(
            f"language {code!r} is not in the XLM-R list; use one of: {', '.join(sorted(XLMR_LANGUAGES))}"
        ) from None


def parse_language_weights(spec: str | None) -> dict[str, float]:
    """Parse `--languages`: None/"all" for the default weights over the whole list, or a comma
    list of codes with optional weights (`"en:5,de:1,fr"`); a code without weight keeps its
    default weight.

    Example:
        >>> parse_language_weights("en:2,de:1")
        {'en': 2.0, 'de': 1.0}
        >>> parse_language_weights("de,fr")["de"]
        2.85
    """
    if spec is None or spec.strip() in ("", "all"):
        return dict(DEFAULT_WEIGHTS)
    weights: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        code, _, weight = item.partition(":")
        code = code.strip()
        language_name(code)  # validates the code
        try:
            value = float(weight) if weight else DEFAULT_WEIGHTS[code]
        except ValueError:
            raise ValueError(
                f"--languages: weight {weight!r} of {code!r} is not a number; write e.g. 'en:5,de:1'"
            ) from None
        if value <= 0:
            raise ValueError(
                f"--languages: weight of {code!r} is {value}; weights must be > 0 (drop the language instead)"
            )
        weights[code] = value
    if not weights:
        raise ValueError(f"--languages {spec!r} names no language; write e.g. 'en,de,fr' or 'all'")
    return weights


def sample_language(rng: random.Random, weights: Mapping[str, float]) -> str:
    """Draw one language code from `weights` with `rng` (deterministic for a seeded rng).

    Example:
        >>> sample_language(random.Random(1), {"en": 1.0})
        'en'
    """
    codes = sorted(weights)  # a fixed order, so the draw does not depend on dict order
    return rng.choices(codes, weights=[weights[c] for c in codes], k=1)[0]


def sample_language_pair(rng: random.Random, weights: Mapping[str, float]) -> tuple[str, str]:
    """Draw a (source, target) pair of two different languages for bitext.

    Both sides follow `weights`; the target is redrawn until it differs from the source.

    Example:
        >>> src, tgt = sample_language_pair(random.Random(0), {"en": 1.0, "de": 1.0})
        >>> {src, tgt} == {"en", "de"}
        True
    """
    if len(weights) < 2:
        raise ValueError(f"bitext needs at least two languages, got {sorted(weights)}; add one to --languages")
    src = sample_language(rng, weights)
    rest = {code: w for code, w in weights.items() if code != src}
    return src, sample_language(rng, rest)
