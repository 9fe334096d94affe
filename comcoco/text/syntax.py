"""Identity / attribute / other word tagging from lexicons (silver tags for SAHM's BiLSTM-CRF).

The paper tags words *identity* (what the object is: "man", "train"), *attribute* (how it looks or where
it is: "red", "left", "wooden", "shirt") or *other* ("with", "the"). Its hand-labelled tagging data is not
public, so the tags here come from lexicons: the 80 COCO category names plus common RefCOCO+ synonyms are
identity words; colour, material, size, clothing, texture, pose and spatial words are attributes; all else
is other. One tag per word (no B/I split: a multi-word name such as "hot dog" tags each word identity).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

TAG_OTHER = 0
TAG_IDENTITY = 1
TAG_ATTRIBUTE = 2
TAG_NAMES: tuple[str, ...] = ("other", "identity", "attribute")

COCO_CATEGORY_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# Words that name what an object is, beyond the COCO names (RefCOCO+ vocabulary).
IDENTITY_SYNONYMS: frozenset[str] = frozenset(
    """
    man men woman women guy guys lady ladies kid kids child children boy boys girl girls baby babies
    player players person people persons gentleman dude lad adult teen teenager toddler infant mom dad
    mother father grandma grandpa catcher batter pitcher umpire skier surfer skater skateboarder rider
    biker cyclist chef cook waiter officer cop soldier bride groom referee goalie
    puppy puppies pup doggy doggie kitty kitten kittens calf calves cattle bull lamb pony foal cub
    bike motorbike motorcycle scooter plane jet aircraft taxi cab van suv jeep pickup vehicle locomotive
    sofa couch loveseat armchair stool seat table desk tv television monitor screen computer phone
    cellphone fridge bag purse luggage ball racket racquet bat glove mitt board donut doughnut hotdog
    sandwich burger pie plant flower flowers pot vase bottle glass mug plate bowl elephant giraffe zebra
    sheep cow horse dog dogs cat cats bird birds bear bears teddy animal animals food
    """.split()
)

ATTRIBUTE_WORDS: frozenset[str] = frozenset(
    """
    red orange yellow green blue purple pink brown black white gray grey silver gold golden beige tan
    dark light bright pale colorful colored striped plaid checkered spotted dotted
    wooden wood metal metallic plastic glass leather cloth paper stone brick steel
    big bigger biggest large larger largest small smaller smallest little tiny huge tall taller tallest
    short shorter long longer wide narrow thin thick fat skinny half full empty partial whole
    shirt tshirt jacket coat sweater hoodie hat cap helmet pants jeans shorts dress skirt uniform jersey
    suit vest scarf glasses sunglasses shoes boots sleeve sleeves collar apron hair beard bald
    fuzzy furry smooth shiny rough striped stripes stripy spots dots polka checks checked
    sitting standing walking running lying laying bending leaning holding looking facing jumping
    eating smiling squatting kneeling crouching swinging
    left right middle center centre top bottom front back behind near far closest farthest nearest
    upper lower corner edge side above below under beside next between leftmost rightmost first second
    third last rear
    """.split()
)

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _identity_vocabulary() -> frozenset[str]:
    words: set[str] = set(IDENTITY_SYNONYMS)
    for name in COCO_CATEGORY_NAMES:
        words.update(name.split())
    # "light"/"sign"/"glove" etc. enter via multi-word names; keep colour-like words attributes
    return frozenset(
        words
        - ATTRIBUTE_WORDS
        - {
            "sports",
            "dining",
            "cell",
            "traffic",
            "stop",
            "fire",
            "parking",
            "potted",
            "wine",
            "hair",
            "tennis",
            "baseball",
            "hot",
        }
    )


IDENTITY_WORDS: frozenset[str] = _identity_vocabulary()


def split_words(expression: str) -> list[str]:
    """Lower-cased words of an expression (letters/digits, keeping simple apostrophes)."""
    return _WORD_RE.findall(expression.lower())


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2] in IDENTITY_WORDS:
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tag_word(word: str, identity: frozenset[str] = IDENTITY_WORDS) -> int:
    """The silver tag of one lower-cased word (``identity`` may be extended by ``extend_identity``)."""
    w = word.split("'")[0]
    if w in ATTRIBUTE_WORDS:
        return TAG_ATTRIBUTE
    if w in identity or _singular(w) in identity:
        return TAG_IDENTITY
    if _singular(w) in ATTRIBUTE_WORDS:
        return TAG_ATTRIBUTE
    return TAG_OTHER


_MULTIWORD_NAMES: frozenset[tuple[str, ...]] = frozenset(
    tuple(n.split()) for n in COCO_CATEGORY_NAMES if " " in n
)


def tag_words(words: Sequence[str], identity: frozenset[str] = IDENTITY_WORDS) -> list[int]:
    """Silver tags for a word sequence; a multi-word COCO name ("traffic light") is identity throughout."""
    low = [w.lower() for w in words]
    tags = [tag_word(w, identity) for w in low]
    for i in range(len(low) - 1):
        if (low[i], low[i + 1]) in _MULTIWORD_NAMES or (low[i], _singular(low[i + 1])) in _MULTIWORD_NAMES:
            tags[i] = tags[i + 1] = TAG_IDENTITY
    return tags


def tag_expression(expression: str, identity: frozenset[str] = IDENTITY_WORDS) -> tuple[list[str], list[int]]:
    """Words and their silver tags for a raw expression."""
    words = split_words(expression)
    return words, tag_words(words, identity)


def extend_identity(names: Iterable[str]) -> frozenset[str]:
    """Identity vocabulary extended by extra category names (e.g. a source's own category list)."""
    extra = {w for n in names for w in split_words(n)}
    return IDENTITY_WORDS | frozenset(extra - ATTRIBUTE_WORDS)
