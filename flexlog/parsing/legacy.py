"""Patterns of the parsing presets before they moved to RE2 (Python ``re`` syntax).

Parser states saved by earlier versions (``TemplateParser.to_dict``, a bundle's parser.json)
hold these strings; :meth:`flexlog.parsing.presets.Preset.from_dict` swaps each for the RE2
pattern at the same place in today's preset, which matches the same text. Generated from the
presets as they were; do not edit.
"""

#: The distinct mask regexes of the old presets.
PATTERNS: tuple[str, ...] = (
    "\\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\\d{1,2} \\d{2}:\\d{2}:\\d{2} \\d{4}\\b",
    "\\b\\d{4}-\\d{2}-\\d{2}[T ]\\d{2}:\\d{2}:\\d{2}(?:[.,]\\d+)?(?:Z|[+-]\\d{2}:?\\d{2})?",
    "\\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\\d{1,2} \\d{2}:\\d{2}:\\d{2}\\b",
    "\\b\\d{2,4}[-/]\\d{2}[-/]\\d{2}\\b",
    "\\b\\d{2}:\\d{2}:\\d{2}(?:[.,]\\d+)?\\b",
    "(?<![\\w.+-])[A-Za-z][\\w+.-]*://[^\\s\\\"'\\])]*",
    "(?<![\\w/])(?:/[^\\s/\\\"'()\\[\\]]*){2,}",
    "[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}",
    "(?<![A-Za-z0-9_.])/?\\d{1,3}(?:\\.\\d{1,3}){3}(?::\\d+)?(?:,/?\\d{1,3}(?:\\.\\d{1,3}){3}(?::\\d+)?)*(?![A-Za-z0-9_])",
    "(?<![A-Za-z0-9_.])0x[0-9a-fA-F]+(?![A-Za-z0-9_])",
    "(?<![A-Za-z0-9_.])[0-9a-f]{16,}(?![A-Za-z0-9_])",
    "(?<![A-Za-z0-9_.])[-+]?\\d+(?:\\.\\d+)?(?:\\s?(?:[KMGTP]i?)?B|[mun]?s)?(?![A-Za-z0-9_])",
    "(?<![\\w<])[A-Za-z_][\\w.-]*\\d[\\w.-]*(?![\\w>])",
    "blk_-?\\d+(?:\\s+blk_-?\\d+)*",
    "(?<![A-Za-z0-9])(?:appattempt|application|attempt|container|job|task|jvm)_\\d+(?:_(?:[mr]|\\d+))*",
    "(?<![A-Za-z0-9_.])(?:[\\w$-]+\\.){2,}[\\w$-]+(?![A-Za-z0-9_])",
    "(?<=rhost=)\\S+",
    "(?<=\\buser )(?<!\\buser user )\\s*\\S+",
    "(?<=\\buser=)\\S+",
    "(?<=\\bpassword for )(?!invalid user )\\S+",
    "(?<=environment:)\\S+=.*",
    "(?<=\\()(?:(?:[\\w-]+\\.)+[\\w-]+)?(?=\\))",
    "\\\\042.*?\\\\042",
    "(?:node-\\d+ 0x[0-9a-fA-F]+ <ok>\\s*)+",
    "node-D?(?:\\d+|\\[[^\\]]*\\])",
    "(?<=\\bdomain )\\S+",
    "(?<![\\w<])[A-Za-z_][\\w.-]*\\d{2,}[\\w.-]*(?![\\w>])",
)

#: Each preset's masks, as indices into PATTERNS, in order.
PRESET_MASKS: dict[str, tuple[int, ...]] = {
    "generic": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12),
    "hdfs": (6, 13, 7, 8, 9, 10, 11, 12),
    "hadoop": (5, 6, 14, 7, 8, 9, 10, 15, 11, 12),
    "spark": (5, 6, 7, 8, 9, 10, 14, 11, 12),
    "openssh": (16, 17, 18, 19, 5, 6, 7, 8, 9, 10, 15, 11, 12),
    "zookeeper": (20, 5, 6, 7, 8, 9, 10, 11, 12),
    "linux": (0, 21, 16, 17, 5, 6, 7, 8, 9, 10, 11, 12),
    "openstack": (5, 6, 7, 8, 9, 10, 11, 12),
    "apache": (5, 6, 7, 8, 9, 10, 11, 12),
    "hpc": (22, 23, 24, 25, 8, 9, 11, 26),
}

#: Each preset's old session pattern.
SESSION_PATTERNS: dict[str, str] = {"hdfs": "blk_-?\\d+"}
