#!/usr/bin/env python3
"""make_demo.py - build the moekit demo corpus (four domains of original text).

Usage:  python3 data/make_demo.py data/demo

Writes, into the given directory:
    prose.txt    English narrative and expository paragraphs
    code.txt     C-like source code (structs, functions, loops)
    math.txt     worked arithmetic and algebra exercises in plain ASCII
    records.txt  structured records: CSV blocks, key=value lines, event logs
    all.txt      prose.txt + code.txt + math.txt + records.txt, byte for byte
    SHA256SUMS   sha256sum-format checksums of the five files above

Every text is made here from templates, word lists and small grammars written for this
script; nothing is copied from elsewhere. The output is a pure function of this file:
the pseudo-random generator is a fixed-seed SplitMix64 implemented below (so the result
does not depend on the Python version's `random` module), no sets or hash order are
iterated, and every number is formatted from integers or Fractions.

Format of every domain file: 7-bit ASCII, '\\n' line ends, no blank line inside a
document, and every document followed by exactly one blank line. Hence `cat` of the four
files keeps documents apart, and splitting on blank lines recovers the documents.

Standard library only.
"""

import hashlib
import os
import sys
import textwrap
from fractions import Fraction
from math import gcd

SEED = 2501_11873          # the paper's arXiv number
TARGET_BYTES = 200_000     # each domain stops at the first document boundary past this
DOMAINS = ("prose", "code", "math", "records")

# --------------------------------------------------------------------------------------
# Deterministic pseudo-random numbers (SplitMix64).
# --------------------------------------------------------------------------------------

M64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed):
        self.s = seed & M64

    def next64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform integer in [0, n) (rejection sampling: exactly uniform)."""
        if n <= 0:
            raise ValueError("below(%d)" % n)
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            x = self.next64()
            if x < limit:
                return x % n

    def int(self, lo, hi):
        """Uniform integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def nonzero(self, lo, hi):
        while True:
            v = self.int(lo, hi)
            if v != 0:
                return v

    def chance(self, percent):
        return self.below(100) < percent

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def sample(self, seq, k):
        """k distinct items of seq, in random order."""
        pool = list(seq)
        out = []
        for _ in range(k):
            out.append(pool.pop(self.below(len(pool))))
        return out

    def shuffle(self, lst):
        for i in range(len(lst) - 1, 0, -1):
            j = self.below(i + 1)
            lst[i], lst[j] = lst[j], lst[i]

    def weighted(self, pairs):
        """pairs: [(weight, value), ...] with integer weights."""
        total = sum(w for w, _ in pairs)
        r = self.below(total)
        for w, v in pairs:
            if r < w:
                return v
            r -= w
        raise AssertionError("unreachable")


def domain_rng(name):
    """An independent stream per domain, so editing one domain leaves the others as they are."""
    h = int.from_bytes(hashlib.sha256(("%d/%s" % (SEED, name)).encode()).digest()[:8], "big")
    return Rng(h)


# --------------------------------------------------------------------------------------
# Small text helpers.
# --------------------------------------------------------------------------------------

def article(word):
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(s):
    return s[:1].upper() + s[1:]


def wrap(text, width=76):
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False,
                                   break_on_hyphens=False))


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth"]


def num_word(n):
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def thousands(n):
    return "{:,}".format(n)


def fill(rng, template, slots):
    """Replace {key} in template; a slot value may be a list (one is chosen) or a callable."""
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "{":
            j = template.index("}", i)
            key = template[i + 1:j]
            v = slots[key]
            if callable(v):
                v = v()
            elif isinstance(v, list):
                v = rng.choice(v)
            out.append(v)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


# ======================================================================================
# Domain 1: prose
# ======================================================================================

FIRST_NAMES = [  # (name, subject pronoun)
    ("Mara", "she"), ("Tomas", "he"), ("Ilse", "she"), ("Oren", "he"), ("Petra", "she"),
    ("Jonah", "he"), ("Lidia", "she"), ("Anselm", "he"), ("Nell", "she"), ("Corin", "he"),
    ("Hana", "she"), ("Rufus", "he"), ("Edda", "she"), ("Silas", "he"), ("Wren", "she"),
    ("Bram", "he"), ("Talia", "she"), ("Felix", "he"), ("Ada", "she"), ("Emil", "he"),
    ("Greta", "she"), ("Hugo", "he"), ("Ines", "she"), ("Leon", "he"), ("Maud", "she"),
    ("Nico", "he"), ("Olga", "she"), ("Pavel", "he"), ("Rosa", "she"), ("Tobias", "he"),
    ("Vera", "she"), ("Yusuf", "he"), ("Agnes", "she"), ("Caspar", "he"), ("Dora", "she"),
    ("Elias", "he"), ("Frida", "she"), ("Gideon", "he"), ("Lotte", "she"), ("Matteo", "he"),
]
PRONOUNS = {
    "she": {"subj": "she", "obj": "her", "pos": "her", "refl": "herself"},
    "he": {"subj": "he", "obj": "him", "pos": "his", "refl": "himself"},
}
TOWN_HEADS = ["Ash", "Bel", "Brack", "Cald", "Dun", "Elm", "Fen", "Gald", "Harrow", "Kell",
              "Lind", "Marl", "North", "Oak", "Pell", "Quarr", "Rook", "Sel", "Thorn",
              "Wend", "Yar", "Alder", "Birch", "Cray", "Hollin", "Stan", "Wil", "Ember"]
TOWN_TAILS = ["by", "ford", "mere", "wick", "ton", "stead", "holm", "bridge", "field",
              "moor", "haven", "combe", "dale", "well", "hurst", "gate"]
RIVERS = ["Lenn", "Ashe", "Corve", "Dunmore", "Ise", "Marrow", "Sorrel", "Tarn", "Wyle",
          "Brenn", "Calder", "Odd", "Kestle", "Fallow", "Tess", "Wharl"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
SEASON_OF_MONTH = ["winter", "winter", "spring", "spring", "spring", "summer", "summer",
                   "summer", "autumn", "autumn", "autumn", "winter"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def town_name(rng):
    return rng.choice(TOWN_HEADS) + rng.choice(TOWN_TAILS)


def person(rng):
    name, p = rng.choice(FIRST_NAMES)
    d = dict(PRONOUNS[p])
    d["name"] = name
    return d


TOWN_KIND = ["town", "village", "market town", "river town", "hill town"]
TOWN_SIZE = ["small", "quiet", "modest", "busy", "compact", "scattered"]
OCCUPATIONS = ["farmers", "weavers", "millers", "fishermen", "potters", "carpenters",
               "shepherds", "brewers", "boatbuilders", "clockmakers", "stonemasons",
               "beekeepers", "rope makers", "tanners", "glassblowers"]
PRODUCTS = ["wool", "apples", "slate", "cheese", "timber", "salt", "linen", "barley",
            "honey", "pottery", "rope", "paper", "cider", "iron nails", "dried fish"]
LANDMARKS = ["clock tower", "covered market", "old granary", "watermill", "chapel",
             "town hall", "old forge", "toll house", "bell tower", "library", "windmill",
             "corn exchange", "guild hall"]
LANDMARK_FEATURES = [
    "its walls are still marked with the height of old floods",
    "a carved date above the door has almost worn away",
    "children are told that it was built in a single summer",
    "its roof was replaced twice after storms",
    "on clear evenings it can be seen from the farms on the far hills",
    "the timber inside came from trees that once grew on the common",
    "it leans a little to the west, though no one is sure why",
    "it is now used as a meeting room and a store for the festival lanterns",
]
FOUNDERS = ["a handful of families from the coast", "monks who farmed the lower fields",
            "traders who wanted a safe place to cross the river",
            "miners looking for copper in the hills", "shepherds who wintered their flocks there",
            "a company of weavers who needed clean running water"]
OCCASIONS = ["the end of the harvest", "the first catch of the spring",
             "the reopening of the bridge after a flood", "the longest day of the year",
             "the return of the swallows", "the founding of the town",
             "the new cider", "the first frost"]
GOODS = ["cheese, bread and late plums", "baskets, rope and cooking pots",
         "eggs, honey and bundles of herbs", "smoked fish and wool blankets",
         "seed potatoes and young hens", "candles, soap and ironware",
         "apples, pears and jars of jam", "wooden toys and painted bowls"]
WINTER = ["long and damp", "short but bitter", "grey and windy", "mild, with little snow",
          "cold enough to freeze the millpond"]
SUMMER = ["warm and dry", "bright but often breezy", "short and green",
          "hot in the valley and cool on the hills"]


def prose_town(rng):
    t = town_name(rng)
    t2 = town_name(rng)
    while t2 == t:
        t2 = town_name(rng)
    river = rng.choice(RIVERS)
    kind = rng.choice(TOWN_KIND)
    occ = rng.sample(OCCUPATIONS, 2)
    prod = rng.sample(PRODUCTS, 2)
    land = rng.choice(LANDMARKS)
    year = rng.int(1180, 1820)
    pop = rng.int(3, 90) * 100
    dirn = rng.choice(["north", "south", "east", "west", "north-east", "south-west"])
    s = []
    s.append(rng.choice([
        "%s is %s %s on the %s bank of the river %s." % (
            t, article(rng.choice(TOWN_SIZE)), kind, rng.choice(["east", "west", "north", "south"]), river),
        "%s lies in a %s valley about %s miles %s of %s." % (
            t, rng.choice(["narrow", "wide", "green", "sheltered", "windy"]),
            num_word(rng.int(3, 12)), dirn, t2),
        "Few travellers stop in %s, %s %s where the road from %s meets the river %s." % (
            t, article(rng.choice(TOWN_SIZE)), kind, t2, river),
        "If you follow the river %s upstream from %s, the first place of any size is %s." % (
            river, t2, t),
    ]))
    s.append(rng.choice([
        "About %s people live there, most of them %s or %s." % (thousands(pop), occ[0], occ[1]),
        "Its %s residents have long worked as %s, and a few families are still %s." % (
            thousands(pop), occ[0], occ[1]),
        "The %s has around %s inhabitants, and nearly every household has at least one of "
        "its members among the %s." % (kind, thousands(pop), occ[0]),
    ]))
    if rng.chance(75):
        s.append(rng.choice([
            "The first houses were built in %d by %s." % (year, rng.choice(FOUNDERS)),
            "Records show a settlement here as early as %d, founded by %s." % (
                year, rng.choice(FOUNDERS)),
            "According to the parish books, %s arrived in %d and stayed because the soil "
            "was good and the river was easy to cross." % (rng.choice(FOUNDERS), year),
        ]))
    s.append(rng.choice([
        "The %s near the square is the oldest building still standing, and %s." % (
            land, rng.choice(LANDMARK_FEATURES)),
        "Visitors usually ask first about the %s; %s." % (land, rng.choice(LANDMARK_FEATURES)),
        "Most photographs of the %s show its %s, and %s." % (
            kind, land, rng.choice(LANDMARK_FEATURES)),
    ]))
    s.append(rng.choice([
        "For most of its history the %s lived on the %s trade, and carts carried the "
        "goods to %s to be sold." % (kind, prod[0], t2),
        "Its wealth once came from %s and %s, and the names of the old merchants can "
        "still be read above the warehouse doors along the water." % (prod[0], prod[1]),
        "Trade in %s made a few families rich, but the %s never grew beyond a "
        "day's walk from end to end." % (prod[0], kind),
    ]))
    if rng.chance(60):
        s.append("Every %s a market fills the square with %s." % (
            rng.choice(WEEKDAYS), rng.choice(GOODS)))
    if rng.chance(60):
        m = rng.below(12)
        s.append(rng.choice([
            "In %s the people hold a festival to mark %s, with music, lanterns and a long "
            "supper in the street." % (MONTHS[m], rng.choice(OCCASIONS)),
            "Each %s there is a small fair to celebrate %s, and relatives come back from "
            "the cities for it." % (MONTHS[m], rng.choice(OCCASIONS)),
        ]))
    if rng.chance(50):
        s.append("Winters are %s, and summers are %s." % (rng.choice(WINTER), rng.choice(SUMMER)))
    s.append(rng.choice([
        "Today %s is known mostly for its %s, though older residents still talk about "
        "the years when the %s trade was at its height." % (t, prod[1], prod[0]),
        "The railway never reached %s, and perhaps for that reason it has changed less "
        "than its neighbours." % t,
        "Young people often leave for %s, but many return when they have children of "
        "their own." % t2,
        "It is not a famous place, but those who know it speak of it with affection.",
    ]))
    return wrap(" ".join(s))


TIME_PHRASES = ["Early one morning in late %s", "On a grey afternoon in %s",
                "Just before dawn on the first day of %s", "One evening toward the end of %s",
                "On a clear cold morning in %s", "In the middle of a wet %s"]
ERRANDS = [  # (object carried, goal, place of goal)
    ("a basket of pears", "sell the fruit at the market", "the market in {town}"),
    ("a letter sealed with green wax", "deliver the letter to the ferryman", "the ferry at {town}"),
    ("a small wooden chest", "return the chest to its owner", "a farm beyond {town}"),
    ("a bundle of dry wool", "trade the wool for lamp oil", "the store in {town}"),
    ("a borrowed saw", "return the saw to the carpenter", "the workshop in {town}"),
    ("a jar of medicine", "bring the medicine to an aunt who was ill", "a cottage near {town}"),
    ("a map drawn in pencil", "find the old boundary stone", "the moor above {town}"),
    ("a sack of seed corn", "plant the lower field before the rain", "the fields below {town}"),
]
ROAD_DESCS = ["climbed slowly between hedges of hawthorn", "ran straight along the river",
              "was muddy after the night's rain", "wound through a wood of beech and oak",
              "crossed three streams by narrow plank bridges",
              "was busy with carts going the other way"]
WEATHER_EVENTS = ["a thin mist hung over the fields", "the wind rose and pushed at the trees",
                  "a light rain began to fall", "the sun came out for the first time in days",
                  "the clouds built up in the west", "frost still whitened the ditches"]
STRANGERS = [  # (description, short name)
    ("an old man mending a fence", "the old man"),
    ("a girl leading two goats", "the girl"),
    ("a carter whose wheel had come off", "the carter"),
    ("a woman selling hot chestnuts", "the woman"),
    ("a boy fishing from the bank", "the boy"),
    ("a surveyor with a brass instrument", "the surveyor"),
    ("a tired postman", "the postman"),
]
STRANGER_ACTIONS = ["asked where {subj} was going", "waved {obj} over to the side of the road",
                    "warned {obj} that the bridge ahead was closed",
                    "offered to share a piece of bread",
                    "asked {obj} for help with a heavy load"]
DIALOG = ["The ford is deep today, so take the long way round",
          "If you hurry you will be there before the bell",
          "Nobody has used that path since the storm",
          "Tell them I sent you, and they will not ask questions",
          "I have walked this road for forty years and never seen it so quiet",
          "Mind the dog at the second gate; it barks but it does not bite"]
OBSTACLES = ["The path ahead had been washed away, and {subj} had to climb the bank on {pos} hands and knees.",
             "A gate that should have been open was chained shut, so {subj} walked a mile along the wall to find a stile.",
             "Halfway there {subj} realised that {subj} had taken the wrong turning, and had to go back.",
             "A herd of cows filled the lane, and {subj} waited a long time for them to pass.",
             "The rain grew heavier, and soon {pos} boots were full of water."]
RESOLUTIONS = ["By the time {subj} reached {dest}, the light was fading, but {subj} had done what {subj} set out to do.",
               "{Subj} arrived at {dest} just as the doors were closing, and the errand was finished after all.",
               "At {dest} {subj} was given a cup of tea and a dry chair by the fire, and the long walk seemed worth it.",
               "When {subj} finally reached {dest}, nobody was there, so {subj} left a note and turned for home.",
               "{Subj} reached {dest} a little late, but no one seemed to mind."]
REFLECTIONS = ["Years later {subj} still remembered that day, though {subj} could never say exactly why.",
               "On the way home {subj} thought about what {stranger} had said, and decided it had been good advice.",
               "That night {subj} slept deeply and did not dream at all.",
               "{Subj} told no one about the walk, but {subj} kept the habit of watching the sky before setting out.",
               "It was the kind of day that is forgotten quickly and then, much later, remembered clearly."]


def prose_story(rng):
    p = person(rng)
    home = town_name(rng)
    town = town_name(rng)
    while town == home:
        town = town_name(rng)
    m = rng.below(12)
    obj, goal, dest = rng.choice(ERRANDS)
    dest = dest.replace("{town}", town)
    stranger, short = rng.choice(STRANGERS)
    slots = {"subj": p["subj"], "obj": p["obj"], "pos": p["pos"], "Subj": cap(p["subj"]),
             "dest": dest, "stranger": short}
    s = []
    s.append("%s, %s left %s with %s." % (
        rng.choice(TIME_PHRASES) % rng.choice([MONTHS[m], SEASON_OF_MONTH[m]]),
        p["name"], home, obj))
    s.append("%s meant to %s before %s." % (
        cap(p["subj"]), goal, rng.choice(["noon", "dark", "the end of the week",
                                          "the market closed", "the weather turned"])))
    s.append("The road %s, and %s." % (rng.choice(ROAD_DESCS), rng.choice(WEATHER_EVENTS)))
    if rng.chance(80):
        s.append("Near the %s %s met %s, who %s." % (
            rng.choice(["crossroads", "old mill", "edge of the wood", "second bridge",
                        "chapel", "bend in the river"]),
            p["subj"], stranger, fill(rng, rng.choice(STRANGER_ACTIONS), slots)))
        if rng.chance(70):
            s.append('"%s," %s said.' % (rng.choice(DIALOG), short))
            s.append(rng.choice([
                "%s thanked %s and walked on." % (p["name"], short),
                "%s nodded, not quite sure whether to believe it." % p["name"],
                "%s laughed and said that %s would take the chance." % (p["name"], p["subj"]),
            ]))
    if rng.chance(70):
        s.append(fill(rng, rng.choice(OBSTACLES), slots))
    s.append(fill(rng, rng.choice(RESOLUTIONS), slots))
    if rng.chance(70):
        s.append(fill(rng, rng.choice(REFLECTIONS), slots))
    return wrap(" ".join(s))


# Diary material: what is common all year, and what belongs to one season.
BIRDS = ["wrens", "rooks", "a pair of herons", "goldfinches", "starlings", "a kestrel",
         "blackbirds", "an owl", "a robin", "magpies"]
SKIES = ["Clear and still all day.", "Low cloud and drizzle until evening.",
         "Strong wind from the west.", "Fog in the valley until ten.",
         "Heavy rain in the night; the stream is high.", "Grey, with a few bright spells."]
CHORES = ["Mended the fence by the lower gate.", "Cleaned out the gutters.",
          "Split wood for the stove.", "Took the cart to be repaired.",
          "Oiled the hinges on the barn door.", "Sharpened the scythe and the shears."]
SEASONAL = {
    "winter": {
        "birds": ["fieldfares", "a flock of geese on the flooded meadow"],
        "plants": ["the first snowdrops", "catkins on the hazel", "moss thick on the north wall",
                   "holly berries by the gate"],
        "skies": ["A hard frost overnight; bright later.", "Snow showers until noon.",
                  "Bitterly cold, with ice on the water butt."],
        "chores": ["Pruned the apple trees.", "Cleared snow from the path.",
                   "Checked the stored potatoes for rot."],
        "temps": (-6, 8),
    },
    "spring": {
        "birds": ["the first swallows", "a cuckoo calling"],
        "plants": ["primroses under the hedge", "wild garlic in the wood",
                   "the hawthorn in blossom", "bluebells along the lane",
                   "new leaves on the beech"],
        "skies": ["Sunshine and showers.", "Mild and bright, with a cool wind."],
        "chores": ["Sowed lettuce and radishes.", "Planted out the early potatoes.",
                   "Cut back the brambles along the path."],
        "temps": (3, 18),
    },
    "summer": {
        "birds": ["swallows", "swifts screaming over the roofs"],
        "plants": ["the elder in flower", "the barley turning gold",
                   "poppies at the field edge", "the first ripe plums"],
        "skies": ["Warm, with thunder in the afternoon.", "Hot and dry all day.",
                  "Dry and mild."],
        "chores": ["Moved the hives to the orchard.", "Watered the beans twice.",
                   "Turned the hay in the top field."],
        "temps": (12, 29),
    },
    "autumn": {
        "birds": ["geese flying south", "swallows gathering on the wires"],
        "plants": ["blackberries ripening", "the ash trees losing their leaves",
                   "mushrooms in the long grass", "rose hips in the hedge"],
        "skies": ["A light frost at dawn; clear later.", "Dry and mild.",
                  "Gales overnight; two branches down."],
        "chores": ["Picked the last of the beans.", "Raked leaves off the lawn.",
                   "Pressed apples for cider."],
        "temps": (2, 17),
    },
}


def prose_diary(rng):
    m = rng.below(12)
    sea = SEASONAL[SEASON_OF_MONTH[m]]
    d = rng.int(1, 22)
    lines = []
    n = rng.int(3, 5)
    for _ in range(n):
        parts = ["%s %d." % (MONTHS[m], d), rng.choice(SKIES + sea["skies"])]
        if rng.chance(70):
            parts.append("Saw %s near the %s." % (rng.choice(BIRDS + sea["birds"]), rng.choice(
                ["house", "river", "barn", "old wall", "pond", "orchard"])))
        if rng.chance(60):
            parts.append("Noticed %s." % rng.choice(sea["plants"]))
        if rng.chance(60):
            parts.append(rng.choice(CHORES + sea["chores"]))
        if rng.chance(25):
            lo, hi = sea["temps"]
            parts.append("The thermometer by the door read %d degrees at %s." % (
                rng.int(lo, hi), rng.choice(["seven", "noon", "six in the evening"])))
        lines.append(" ".join(parts))
        d += rng.int(1, 3)
    return "\n".join(wrap(x) for x in lines)


EXPLAINERS = {
    "how a watermill works": [
        "A watermill turns the energy of moving water into the slow, heavy motion needed to grind grain.",
        "Water is led from the river along a channel called a leat, and it falls onto or pushes against a large wheel.",
        "As the wheel turns, its shaft drives a set of wooden gears inside the mill.",
        "The gears speed up the motion and pass it to the upper millstone, which spins above a fixed lower stone.",
        "Grain is poured in through a hole at the centre of the upper stone and is crushed as it moves outward.",
        "The flour leaves at the edge of the stones and falls into a wooden chute.",
        "The miller can raise or lower the upper stone by a fraction of an inch to make the flour finer or coarser.",
        "In dry summers, when the river ran low, many mills could work only a few hours a day.",
    ],
    "why bread dough rises": [
        "Bread dough rises because of the yeast mixed into it.",
        "Yeast is a living fungus, and when it is warm and has sugar to feed on, it gives off carbon dioxide gas.",
        "Kneading the dough stretches the proteins in the flour into long elastic strands.",
        "These strands form a network that traps the gas in thousands of tiny bubbles.",
        "As more gas is produced, the bubbles grow and the whole dough swells.",
        "If the kitchen is cold, the yeast works slowly and the dough may take many hours to rise.",
        "In the oven the heat makes the gas expand once more before the yeast dies and the crumb sets.",
        "This is why a loaf that has risen well is light and full of small holes.",
    ],
    "how bees make honey": [
        "Honey begins as nectar, a thin sweet liquid that flowers produce to attract insects.",
        "A forager bee sucks up the nectar and carries it back to the hive in a special stomach.",
        "There it passes the nectar to younger bees, who add enzymes that change its sugars.",
        "The bees spread the liquid in the wax cells of the comb.",
        "They fan it with their wings until much of the water has evaporated.",
        "When the honey is thick enough, they seal each cell with a thin cap of wax.",
        "A strong colony may gather nectar from millions of flowers to fill a single jar.",
        "The honey is their food for the winter, so a careful beekeeper always leaves them enough.",
    ],
    "how a sundial tells the time": [
        "A sundial tells the time from the shadow cast by the sun.",
        "A fixed edge, called the gnomon, throws its shadow onto a plate marked with hour lines.",
        "As the sun crosses the sky from east to west, the shadow moves around the plate.",
        "For the dial to be accurate, the gnomon must point toward the celestial pole and be set at an angle equal to the local latitude.",
        "A sundial shows solar time, which can differ from clock time by a quarter of an hour or more during the year.",
        "Many old dials carry a small table showing how much to add or subtract in each month.",
        "Of course, a sundial is of no use on a cloudy day or at night.",
    ],
    "how rain forms": [
        "Rain begins as water vapour, an invisible gas in the air.",
        "When warm, moist air rises, it expands and cools.",
        "Cool air cannot hold as much vapour, so some of it condenses onto tiny specks of dust and salt.",
        "Billions of these droplets together form a cloud.",
        "Inside the cloud, droplets collide and merge, and some grow large enough to fall.",
        "In colder clouds, ice crystals grow at the expense of the droplets and melt as they fall through warmer air.",
        "A single raindrop may contain the water of a million cloud droplets.",
        "Hills force air upward, which is why their windward slopes are often the wettest places in a region.",
    ],
    "how a compass works": [
        "A compass needle is a thin magnet that is free to turn.",
        "The Earth itself behaves like a very large, weak magnet.",
        "The needle lines up with the Earth's magnetic field, so one end points roughly north.",
        "Magnetic north is not the same as true north, and the difference changes from place to place and from year to year.",
        "Maps for walkers usually state this difference so that readings can be corrected.",
        "Iron objects nearby, such as a belt buckle or a fence post, can pull the needle off its true line.",
        "Sailors once kept the compass in a wooden box on deck, far from the ship's metal fittings.",
    ],
    "why cream turns into butter": [
        "Fresh cream is made of tiny droplets of fat floating in water.",
        "Each droplet is wrapped in a thin membrane that keeps it separate from its neighbours.",
        "When the cream is churned or shaken, the membranes are damaged.",
        "The exposed fat sticks together, first into small grains and then into larger lumps.",
        "The liquid left behind is buttermilk, which is poured off.",
        "The butter is washed in cold water and pressed to remove as much liquid as possible.",
        "Salt is often worked in at the end, both for flavour and to help the butter keep.",
    ],
    "how tides rise and fall": [
        "Tides are caused mainly by the pull of the moon on the oceans.",
        "The water on the side of the Earth facing the moon is pulled a little toward it.",
        "On the opposite side a second bulge forms, because the Earth itself is pulled away from the water there.",
        "As the Earth turns, most coasts pass through both bulges, so they see two high tides a day.",
        "The sun also pulls on the oceans, though less strongly than the moon.",
        "When sun and moon are in line, their pulls add together and the tides are largest.",
        "The shape of a bay or estuary can make the tide much higher than it is on the open sea.",
    ],
    "how a lock lifts boats": [
        "A canal lock lets boats climb or descend a slope in a series of level steps.",
        "It is a narrow chamber with watertight gates at each end.",
        "To go up, a boat enters the chamber and the lower gates are closed behind it.",
        "Small openings in the upper gates are then opened, and water flows in from the higher level.",
        "The boat rises with the water until the chamber is level with the canal above.",
        "The upper gates can then be pushed open, and the boat continues on its way.",
        "Going down is the same process in reverse, and each passage uses a whole chamber of water from the upper level.",
    ],
}
EXPLAINER_KEYS = list(EXPLAINERS.keys())


def prose_explainer(rng):
    key = rng.choice(EXPLAINER_KEYS)
    facts = EXPLAINERS[key]
    # Keep the first fact (the topic sentence) and an ordered subset of the others.
    keep = [facts[0]] + [f for f in facts[1:] if rng.chance(80)]
    intro = rng.choice([
        "People often ask %s." % key,
        "It is worth knowing %s." % key,
        "Here, in a few plain sentences, is %s." % key,
        "",
        "",
    ])
    outro = rng.choice([
        "",
        "",
        "Once the idea is clear, the rest follows naturally.",
        "Like many everyday things, it is simpler than it first appears.",
        "Old handbooks describe the same process in much the same words.",
    ])
    text = " ".join(x for x in [intro] + keep + [outro] if x)
    return wrap(text)


LETTER_NEWS = [
    "The weather has been {weather} all week, and the garden is {garden}.",
    "Your cousin {other} has found work at the {work}, and seems happy there.",
    "We finally repaired the {repair}, though it took three weekends and most of our patience.",
    "The {landmark} is being painted, so the square is full of ladders and buckets.",
    "There was a concert in the {hall} last {day}, and half the town turned out for it.",
    "The river came up over the lower path in the storm, but no houses were flooded.",
    "Prices at the market have gone up again, especially for {goods}.",
    "The new teacher at the school has started a choir, and {other} has joined it.",
    "I have been reading in the evenings, mostly old books about {topic}.",
]
LETTER_FILL = {
    "weather": ["wet", "unusually warm", "cold and bright", "changeable", "dry and windy"],
    "garden": ["full of weeds", "doing better than last year", "mostly mud",
               "bright with marigolds", "waiting for rain"],
    "work": ["paper mill", "boatyard", "new bakery", "post office", "timber yard",
             "railway depot"],
    "repair": ["roof of the shed", "garden wall", "kitchen pump", "back gate",
               "chimney", "old clock in the hall"],
    "landmark": ["town hall", "chapel", "bell tower", "library", "old granary"],
    "hall": ["town hall", "chapel", "school hall", "library"],
    "day": WEEKDAYS,
    "goods": ["butter and eggs", "lamp oil", "coal", "flour", "wool"],
    "topic": ["the sea", "travel in the mountains", "old ships", "birds", "gardening",
              "the history of the valley"],
}


def prose_letter(rng):
    writer = person(rng)
    reader = person(rng)
    while reader["name"] == writer["name"]:
        reader = person(rng)
    other = person(rng)
    slots = dict(LETTER_FILL)
    slots["other"] = other["name"]
    news = [fill(rng, x, slots) for x in rng.sample(LETTER_NEWS, rng.int(3, 5))]
    opening = rng.choice([
        "Thank you for your letter, which arrived on %s." % rng.choice(WEEKDAYS),
        "It has been too long since I last wrote, and I am sorry for that.",
        "I hope this finds you well and settled in %s." % town_name(rng),
        "Your parcel came yesterday, and everyone here was delighted with it.",
    ])
    closing = rng.choice([
        "Write when you can, and tell me everything.",
        "Come and see us in the %s if you are able." % rng.choice(["spring", "summer", "autumn"]),
        "Give my regards to everyone, and take care of yourself.",
        "I will write again when there is more to tell.",
    ])
    body = wrap(" ".join([opening] + news + [closing]))
    sign = rng.choice(["With love", "Yours", "Warm wishes", "Your friend", "Affectionately"])
    return "Dear %s,\n%s\n%s,\n%s" % (reader["name"], body, sign, writer["name"])


TRADES = [  # (trade, place of work, tools, product, hard part)
    ("potter", "a low shed behind the house", "a kick wheel and a wood-fired kiln",
     "jugs, bowls and plates", "the firing, which can ruin a month of work in a single night"),
    ("blacksmith", "a forge beside the road", "an anvil, tongs and a set of hammers",
     "hinges, hooks and farm tools", "keeping the fire at exactly the right heat"),
    ("bookbinder", "a narrow room above the bakery", "a press, bone folders and linen thread",
     "notebooks and repaired ledgers", "matching the colour of old leather"),
    ("clockmaker", "a workshop full of ticking", "tiny screwdrivers, tweezers and a loupe",
     "small wall clocks and mantel clocks", "finding parts for clocks a century old"),
    ("basket maker", "the porch of a cottage by the river", "a knife, a bodkin and bundles of willow",
     "log baskets, egg baskets and fish traps", "cutting the willow at the right time of year"),
    ("baker", "a bakery on the main street", "a brick oven and wooden proving trays",
     "bread, buns and fruit cakes", "getting up at three every morning"),
    ("boatbuilder", "an open shed at the water's edge", "adzes, planes and steam boxes",
     "rowing boats and small sailing dinghies", "bending the planks without cracking them"),
    ("weaver", "a bright room with a large loom", "a loom, shuttles and a warping frame",
     "blankets, scarves and table linen", "setting up the warp, which can take a whole day"),
]


def prose_profile(rng):
    p = person(rng)
    town = town_name(rng)
    trade, place, tools, prod, hard = rng.choice(TRADES)
    years = rng.int(4, 45)
    s = []
    s.append(rng.choice([
        "%s has worked as %s in %s for %s years." % (p["name"], article(trade), town, num_word(years)),
        "For %s years %s has been the %s of %s." % (num_word(years), p["name"], trade, town),
        "Most people in %s know %s as the %s." % (town, p["name"], trade),
    ]))
    s.append("%s works in %s, with %s." % (cap(p["subj"]), place, tools))
    s.append(rng.choice([
        "%s learned the trade from %s, who had learned it as a child." % (
            cap(p["subj"]), rng.choice(["an uncle", "a neighbour", "%s mother" % p["pos"],
                                        "%s father" % p["pos"], "an old friend of the family"])),
        "%s came to the work late, after %s years as %s." % (
            cap(p["subj"]), num_word(rng.int(2, 12)), article(rng.choice(
                ["clerk", "sailor", "teacher", "farm hand", "soldier", "shop assistant"]))),
        "Nobody taught %s; %s learned from books and from a great many mistakes." % (
            p["obj"], p["subj"]),
    ]))
    s.append("Most weeks %s makes %s, and sells them %s." % (
        p["subj"], prod, rng.choice(["at the market", "to neighbours", "from the door",
                                     "to a shop in the city", "to whoever asks"])))
    s.append("The hardest part, %s says, is %s." % (p["subj"], hard))
    if rng.chance(60):
        s.append(rng.choice([
            "%s hopes that someone young will take over the %s one day." % (
                cap(p["subj"]), rng.choice(["workshop", "business", "trade"])),
            "%s has no plans to stop." % cap(p["subj"]),
            "Asked whether %s would choose the same life again, %s only laughs." % (
                p["subj"], p["subj"]),
            "In the evenings %s still sketches new designs at the kitchen table." % p["subj"],
        ]))
    return wrap(" ".join(s))


def make_prose(rng):
    kinds = [(22, prose_town), (28, prose_story), (10, prose_diary), (16, prose_explainer),
             (12, prose_letter), (12, prose_profile)]
    return rng.weighted(kinds)(rng)


# ======================================================================================
# Domain 2: C-like code
# ======================================================================================

PREFIXES = ["buf", "pool", "queue", "item", "cell", "node", "rec", "pkt", "tile", "span",
            "slot", "entry", "frame", "chunk", "token", "sample", "block", "page", "row",
            "grid", "sensor", "order", "track", "vec", "arena", "mesh", "glyph", "job"]
NOUNS = ["count", "total", "value", "weight", "score", "size", "offset", "level", "index",
         "depth", "width", "height", "speed", "price", "age", "load", "rank", "cost"]
ELEM_TYPES = ["int", "long", "double", "float", "unsigned", "int32_t", "int64_t", "uint32_t",
              "size_t", "short"]
FLOAT_TYPES = ("double", "float")


class CStyle:
    """Indentation and brace placement of one document."""

    def __init__(self, rng):
        self.ind = rng.weighted([(6, "    "), (2, "  "), (2, "\t")])
        self.allman = rng.chance(20)

    def block(self, head, body, depth=0, tail=""):
        """head: 'for (...)', body: list of lines already indented relative to the block."""
        pad = self.ind * depth
        out = []
        if self.allman:
            out.append(pad + head)
            out.append(pad + "{")
        else:
            out.append(pad + head + " {")
        for line in body:
            out.append(self.ind * (depth + 1) + line if line else line)
        out.append(pad + "}" + tail)
        return out

    def chain(self, arms, depth=0):
        """if / else if / else: arms = [(head, body), ...], heads 'if (...)', 'else if (...)',
        'else'. K&R style joins '} else' on one line."""
        out = []
        for k, (head, body) in enumerate(arms):
            lines = self.block(head, body, depth)
            if k > 0 and not self.allman:
                out[-1] = out[-1] + " " + lines[0].lstrip()
                lines = lines[1:]
            out += lines
        return out


def zero_of(t):
    return "0.0" if t == "double" else ("0.0f" if t == "float" else "0")


def c_comment(rng, text):
    if rng.chance(50):
        return ["/* %s */" % text]
    return ["// %s" % text]


def code_sum(rng, st):
    t = rng.choice(ELEM_TYPES)
    noun = rng.choice(NOUNS)
    pre = rng.choice(PREFIXES)
    i = rng.choice(["i", "k", "j"])
    acc_t = "double" if t in FLOAT_TYPES else rng.choice(["long", "long long", "int64_t"])
    fname = "%s_%s_sum" % (pre, noun)
    lines = c_comment(rng, "Sum of the %s of n %ss." % (noun, pre))
    body = ["%s s = %s;" % (acc_t, zero_of(acc_t))]
    body += st.block("for (size_t %s = 0; %s < n; %s++)" % (i, i, i), ["s += a[%s];" % i])
    body.append("return s;")
    lines += st.block("%s %s(const %s *a, size_t n)" % (acc_t, fname, t), body)
    if rng.chance(50):
        mname = "%s_%s_mean" % (pre, noun)
        b2 = st.block("if (n == 0)", ["return 0.0;"])
        b2.append("return (double)%s(a, n) / (double)n;" % fname)
        lines += st.block("double %s(const %s *a, size_t n)" % (mname, t), b2)
    return lines


def code_max(rng, st):
    t = rng.choice(ELEM_TYPES)
    pre = rng.choice(PREFIXES)
    noun = rng.choice(NOUNS)
    fname = "%s_argmax_%s" % (pre, noun)
    lines = c_comment(rng, "Index of the largest %s; ties go to the lower index." % noun)
    body = ["size_t best = 0;"]
    body += st.block("for (size_t i = 1; i < n; i++)",
                     st.block("if (v[i] > v[best])", ["best = i;"]))
    body.append("return best;")
    lines += st.block("size_t %s(const %s *v, size_t n)" % (fname, t), body)
    return lines


def code_struct_vec(rng, st):
    t = rng.choice(ELEM_TYPES)
    pre = rng.choice(PREFIXES)
    sname = "%s_list" % pre
    lines = []
    if rng.chance(40):
        lines += ["#include <stdlib.h>", "#include <stddef.h>"]
    lines += c_comment(rng, "A growable array of %s values." % t)
    lines += st.block("struct %s" % sname,
                      ["%s *data;" % t, "size_t len;", "size_t cap;"], tail=";")
    grow = rng.choice(["2", "3 / 2 + 1"])
    body = []
    body += st.block("if (l->len == l->cap)", [
        "size_t cap = l->cap ? l->cap * %s : %d;" % (grow, rng.choice([4, 8, 16])),
        "%s *p = realloc(l->data, cap * sizeof *p);" % t,
    ] + st.block("if (p == NULL)", ["return -1;"]) + [
        "l->data = p;",
        "l->cap = cap;",
    ])
    body.append("l->data[l->len++] = x;")
    body.append("return 0;")
    lines += st.block("int %s_push(struct %s *l, %s x)" % (sname, sname, t), body)
    if rng.chance(70):
        lines += st.block("void %s_free(struct %s *l)" % (sname, sname),
                          ["free(l->data);", "l->data = NULL;", "l->len = l->cap = 0;"])
    if rng.chance(50):
        body = st.block("if (l->len == 0)", ["return -1;"])
        body += ["*out = l->data[--l->len];", "return 0;"]
        lines += st.block("int %s_pop(struct %s *l, %s *out)" % (sname, sname, t), body)
    return lines


def code_strings(rng, st):
    which = rng.below(4)
    lines = []
    if which == 0:
        c = rng.choice(["' '", "'\\n'", "','", "'/'", "'.'", "'a'", "':'"])
        lines += c_comment(rng, "Count how many times %s occurs in s." % c)
        body = ["size_t n = 0;"]
        body += st.block("for (; *s != '\\0'; s++)", st.block("if (*s == %s)" % c, ["n++;"]))
        body.append("return n;")
        lines += st.block("size_t count_%s(const char *s)" % rng.choice(
            ["char", "sep", "hits", "marks"]), body)
    elif which == 1:
        lines += c_comment(rng, "Reverse a string in place.")
        body = ["size_t i = 0, j = strlen(s);"]
        body += st.block("if (j == 0)", ["return;"])
        body.append("j--;")
        body += st.block("while (i < j)", ["char tmp = s[i];", "s[i++] = s[j];", "s[j--] = tmp;"])
        lines += st.block("void str_reverse(char *s)", body)
    elif which == 2:
        lines += c_comment(rng, "Remove leading and trailing spaces; returns the new start.")
        body = st.block("while (*s == ' ' || *s == '\\t')", ["s++;"])
        body.append("char *end = s + strlen(s);")
        body += st.block("while (end > s && (end[-1] == ' ' || end[-1] == '\\t'))", ["end--;"])
        body += ["*end = '\\0';", "return s;"]
        lines += st.block("char *str_trim(char *s)", body)
    else:
        lines += c_comment(rng, "Copy at most n-1 bytes of src into dst and terminate it.")
        body = st.block("if (n == 0)", ["return 0;"])
        body.append("size_t i = 0;")
        body += st.block("for (; i + 1 < n && src[i] != '\\0'; i++)", ["dst[i] = src[i];"])
        body += ["dst[i] = '\\0';", "return i;"]
        lines += st.block("size_t str_copy(char *dst, const char *src, size_t n)", body)
    return lines


def code_bsearch(rng, st):
    t = rng.choice(["int", "long", "uint32_t", "int64_t", "double"])
    pre = rng.choice(PREFIXES)
    lines = c_comment(rng, "Binary search in a sorted array; returns the index or -1.")
    body = ["size_t lo = 0, hi = n;"]
    inner = ["size_t mid = lo + (hi - lo) / 2;"]
    inner += st.chain([("if (a[mid] < key)", ["lo = mid + 1;"]),
                       ("else if (a[mid] > key)", ["hi = mid;"]),
                       ("else", ["return (long)mid;"])])
    body += st.block("while (lo < hi)", inner)
    body.append("return -1;")
    lines += st.block("long %s_find(const %s *a, size_t n, %s key)" % (pre, t, t), body)
    return lines


def code_list(rng, st):
    pre = rng.choice(PREFIXES)
    noun = rng.choice(NOUNS)
    t = rng.choice(["int", "long", "double", "unsigned"])
    lines = c_comment(rng, "Singly linked list of %ss." % pre)
    lines += st.block("struct %s" % pre, ["%s %s;" % (t, noun), "struct %s *next;" % pre], tail=";")
    body = ["struct %s *p = malloc(sizeof *p);" % pre]
    body += st.block("if (!p)", ["return NULL;"])
    body += ["p->%s = %s;" % (noun, noun), "p->next = head;", "return p;"]
    lines += st.block("struct %s *%s_push(struct %s *head, %s %s)" % (pre, pre, pre, t, noun), body)
    if rng.chance(60):
        body = ["size_t n = 0;"]
        body += st.block("for (const struct %s *p = head; p; p = p->next)" % pre, ["n++;"])
        body.append("return n;")
        lines += st.block("size_t %s_length(const struct %s *head)" % (pre, pre), body)
    if rng.chance(60):
        body = st.block("while (head)", ["struct %s *next = head->next;" % pre, "free(head);",
                                         "head = next;"])
        lines += st.block("void %s_free_all(struct %s *head)" % (pre, pre), body)
    return lines


def code_ring(rng, st):
    pre = rng.choice(PREFIXES)
    size = rng.choice([8, 16, 32, 64, 128, 256])
    t = rng.choice(["int", "uint8_t", "uint32_t", "double", "char"])
    up = pre.upper()
    lines = ["#define %s_RING_SIZE %d" % (up, size)]
    lines += c_comment(rng, "Fixed-size ring buffer; one slot stays empty to tell full from empty.")
    lines += st.block("struct %s_ring" % pre, ["%s slots[%s_RING_SIZE];" % (t, up),
                                              "unsigned head;", "unsigned tail;"], tail=";")
    body = ["unsigned next = (r->head + 1) %% %s_RING_SIZE;" % up]
    body += st.block("if (next == r->tail)", ["return 0;"])
    body += ["r->slots[r->head] = x;", "r->head = next;", "return 1;"]
    lines += st.block("int %s_ring_put(struct %s_ring *r, %s x)" % (pre, pre, t), body)
    body = st.block("if (r->tail == r->head)", ["return 0;"])
    body += ["*x = r->slots[r->tail];", "r->tail = (r->tail + 1) %% %s_RING_SIZE;" % up, "return 1;"]
    lines += st.block("int %s_ring_get(struct %s_ring *r, %s *x)" % (pre, pre, t), body)
    return lines


def code_matrix(rng, st):
    t = rng.choice(["double", "float"])
    which = rng.below(2)
    if which == 0:
        lines = c_comment(rng, "C = A * B for row-major A (m x k), B (k x n), C (m x n).")
        inner = ["%s s = %s;" % (t, zero_of(t))]
        inner += st.block("for (int p = 0; p < k; p++)", ["s += a[i * k + p] * b[p * n + j];"])
        inner.append("c[i * n + j] = s;")
        body = st.block("for (int i = 0; i < m; i++)",
                        st.block("for (int j = 0; j < n; j++)", inner))
        lines += st.block("void matmul(const %s *a, const %s *b, %s *c, int m, int k, int n)" % (t, t, t), body)
    else:
        lines = c_comment(rng, "Transpose a rows x cols matrix into out (cols x rows).")
        body = st.block("for (int r = 0; r < rows; r++)",
                        st.block("for (int c = 0; c < cols; c++)",
                                 ["out[c * rows + r] = in[r * cols + c];"]))
        lines += st.block("void transpose(const %s *in, %s *out, int rows, int cols)" % (t, t), body)
    return lines


def code_hash(rng, st):
    pre = rng.choice(PREFIXES)
    lines = c_comment(rng, "FNV-1a hash of a NUL-terminated string.")
    body = ["uint32_t h = 2166136261u;"]
    body += st.block("for (; *s; s++)", ["h ^= (unsigned char)*s;", "h *= 16777619u;"])
    body.append("return h;")
    lines += st.block("static uint32_t %s_hash(const char *s)" % pre, body)
    if rng.chance(70):
        nb = rng.choice([64, 128, 256, 1024])
        lines += ["#define %s_BUCKETS %d" % (pre.upper(), nb)]
        lines += st.block("struct %s_entry" % pre, ["const char *key;", "int value;",
                                                   "struct %s_entry *next;" % pre], tail=";")
        body = ["uint32_t b = %s_hash(key) %% %s_BUCKETS;" % (pre, pre.upper())]
        body += st.block("for (struct %s_entry *e = table[b]; e; e = e->next)" % pre,
                         st.block("if (strcmp(e->key, key) == 0)", ["return e;"]))
        body.append("return NULL;")
        lines += st.block("struct %s_entry *%s_lookup(struct %s_entry **table, const char *key)"
                          % (pre, pre, pre), body)
    return lines


def code_inline(rng, st):
    t = rng.choice(["int", "long", "double", "float"])
    lines = []
    fs = rng.sample(["clamp", "min", "max", "abs", "sign", "lerp"], rng.int(2, 3))
    for f in fs:
        if f == "clamp":
            lines += st.block("static inline %s clamp_%s(%s x, %s lo, %s hi)" % (t, t[0], t, t, t),
                              ["return x < lo ? lo : (x > hi ? hi : x);"])
        elif f == "min":
            lines += st.block("static inline %s min_%s(%s a, %s b)" % (t, t[0], t, t),
                              ["return a < b ? a : b;"])
        elif f == "max":
            lines += st.block("static inline %s max_%s(%s a, %s b)" % (t, t[0], t, t),
                              ["return a > b ? a : b;"])
        elif f == "abs":
            lines += st.block("static inline %s abs_%s(%s x)" % (t, t[0], t),
                              ["return x < 0 ? -x : x;"])
        elif f == "sign":
            lines += st.block("static inline int sign_%s(%s x)" % (t[0], t),
                              ["return (x > 0) - (x < 0);"])
        else:
            ft = t if t in FLOAT_TYPES else "double"
            lines += st.block("static inline %s lerp_%s(%s a, %s b, %s u)" % (ft, ft[0], ft, ft, ft),
                              ["return a + (b - a) * u;"])
    return lines


STATE_SETS = [
    ("door", ["CLOSED", "OPENING", "OPEN", "CLOSING"]),
    ("lamp", ["OFF", "WARMING", "ON", "FAULT"]),
    ("pump", ["IDLE", "PRIMING", "RUNNING", "STOPPED"]),
    ("link", ["DOWN", "CONNECTING", "UP", "DRAINING"]),
    ("valve", ["SHUT", "MOVING", "OPEN", "JAMMED"]),
]


def code_state(rng, st):
    dev, states = rng.choice(STATE_SETS)
    up = dev.upper()
    lines = c_comment(rng, "States of the %s controller." % dev)
    lines += st.block("enum %s_state" % dev,
                      ["%s_%s%s" % (up, s, "," if k < len(states) - 1 else "")
                       for k, s in enumerate(states)], tail=";")
    cases = []
    for k, s in enumerate(states):
        nxt = states[(k + 1) % len(states)]
        cases.append("case %s_%s:" % (up, s))
        if k == len(states) - 1:
            cases.append(st.ind + "return %s_%s;" % (up, nxt))
        else:
            cases.append(st.ind + "return ev ? %s_%s : %s_%s;" % (up, nxt, up, s))
    body = st.block("switch (s)", cases)
    body.append("return s;")
    lines += st.block("enum %s_state %s_step(enum %s_state s, int ev)" % (dev, dev, dev), body)
    if rng.chance(60):
        cases = []
        for s in states:
            cases.append("case %s_%s: return \"%s\";" % (up, s, s.lower()))
        body = st.block("switch (s)", cases)
        body.append('return "unknown";')
        lines += st.block("const char *%s_state_name(enum %s_state s)" % (dev, dev), body)
    return lines


def code_parse(rng, st):
    lines = c_comment(rng, "Parse a decimal unsigned number; returns -1 on junk or overflow.")
    limit = rng.choice(["UINT32_MAX", "65535u", "1000000u"])
    body = st.block("if (*s == '\\0')", ["return -1;"])
    body.append("uint64_t v = 0;")
    inner = st.block("if (*s < '0' || *s > '9')", ["return -1;"])
    inner.append("v = v * 10 + (uint64_t)(*s - '0');")
    inner += st.block("if (v > %s)" % limit, ["return -1;"])
    body += st.block("for (; *s; s++)", inner)
    body += ["*out = (uint32_t)v;", "return 0;"]
    lines += st.block("int parse_u32(const char *s, uint32_t *out)", body)
    return lines


def code_sort(rng, st):
    t = rng.choice(["int", "long", "double", "float", "unsigned"])
    pre = rng.choice(PREFIXES)
    if rng.chance(60):
        lines = c_comment(rng, "Insertion sort, ascending; fine for short arrays.")
        inner = ["%s x = a[i];" % t, "size_t j = i;"]
        inner += st.block("while (j > 0 && a[j - 1] > x)", ["a[j] = a[j - 1];", "j--;"])
        inner.append("a[j] = x;")
        body = st.block("for (size_t i = 1; i < n; i++)", inner)
        lines += st.block("void %s_sort(%s *a, size_t n)" % (pre, t), body)
    else:
        lines = c_comment(rng, "Bubble sort with an early exit when a pass swaps nothing.")
        inner = ["int swapped = 0;"]
        inner += st.block("for (size_t i = 1; i < n; i++)",
                          st.block("if (a[i - 1] > a[i])",
                                   ["%s t = a[i - 1];" % t, "a[i - 1] = a[i];", "a[i] = t;",
                                    "swapped = 1;"]))
        inner += st.block("if (!swapped)", ["break;"])
        inner.append("n--;")
        body = st.block("while (n > 1)", inner)
        lines += st.block("void %s_sort(%s *a, size_t n)" % (pre, t), body)
    return lines


def code_numeric(rng, st):
    which = rng.below(3)
    if which == 0:
        lines = c_comment(rng, "Greatest common divisor by Euclid's algorithm.")
        body = st.block("while (b != 0)", ["unsigned long r = a % b;", "a = b;", "b = r;"])
        body.append("return a;")
        lines += st.block("unsigned long gcd(unsigned long a, unsigned long b)", body)
    elif which == 1:
        lines = c_comment(rng, "b^e mod m by repeated squaring.")
        inner = st.block("if (e & 1)", ["r = r * b % m;"])
        inner += ["b = b * b % m;", "e >>= 1;"]
        body = ["uint64_t r = 1 % m;", "b %= m;"]
        body += st.block("while (e > 0)", inner)
        body.append("return r;")
        lines += st.block("uint64_t pow_mod(uint64_t b, uint64_t e, uint64_t m)", body)
    else:
        lines = c_comment(rng, "Return 1 if n is prime, by trial division.")
        body = st.block("if (n < 2)", ["return 0;"])
        body += st.block("for (unsigned d = 2; d * d <= n; d++)",
                         st.block("if (n % d == 0)", ["return 0;"]))
        body.append("return 1;")
        lines += st.block("int is_prime(unsigned n)", body)
    return lines


def code_hist(rng, st):
    bins = rng.choice([8, 10, 16, 32, 64])
    lines = c_comment(rng, "Histogram of values in [lo, hi) with %d equal bins." % bins)
    inner = ["int b = (int)((x[i] - lo) / (hi - lo) * %d);" % bins]
    inner += st.block("if (b < 0)", ["b = 0;"])
    inner += st.block("if (b >= %d)" % bins, ["b = %d;" % (bins - 1)])
    inner.append("counts[b]++;")
    body = st.block("for (int b = 0; b < %d; b++)" % bins, ["counts[b] = 0;"])
    body += st.block("for (size_t i = 0; i < n; i++)", inner)
    lines += st.block("void histogram(const double *x, size_t n, double lo, double hi, long counts[%d])"
                      % bins, body)
    return lines


def code_point(rng, st):
    t = rng.choice(["double", "float", "int", "long"])
    nm = rng.choice(["point", "vec2", "pos", "coord"])
    lines = c_comment(rng, "2-D %ss and an axis-aligned bounding box." % nm)
    lines += st.block("struct %s" % nm, ["%s x, y;" % t], tail=";")
    lines += st.block("struct box", ["struct %s min, max;" % nm], tail=";")
    lines += st.block("%s dist2(struct %s a, struct %s b)" % (t, nm, nm),
                      ["%s dx = a.x - b.x, dy = a.y - b.y;" % t, "return dx * dx + dy * dy;"])
    body = st.block("if (p.x < b->min.x)", ["b->min.x = p.x;"])
    body += st.block("if (p.y < b->min.y)", ["b->min.y = p.y;"])
    body += st.block("if (p.x > b->max.x)", ["b->max.x = p.x;"])
    body += st.block("if (p.y > b->max.y)", ["b->max.y = p.y;"])
    lines += st.block("void box_add(struct box *b, struct %s p)" % nm, body)
    return lines


def code_main(rng, st):
    n = rng.int(4, 9)
    vals = [rng.int(-50, 200) for _ in range(n)]
    lines = ["#include <stdio.h>"]
    body = ["int v[] = { %s };" % ", ".join(str(x) for x in vals),
            "int n = (int)(sizeof v / sizeof v[0]);",
            "long sum = 0;", "int lo = v[0], hi = v[0];"]
    inner = ["sum += v[i];"]
    inner += st.block("if (v[i] < lo)", ["lo = v[i];"])
    inner += st.block("if (v[i] > hi)", ["hi = v[i];"])
    body += st.block("for (int i = 0; i < n; i++)", inner)
    body.append('printf("n=%d sum=%ld min=%d max=%d\\n", n, sum, lo, hi);')
    body.append("return 0;")
    lines += st.block("int main(void)", body)
    return lines


def code_clamp_loop(rng, st):
    t = rng.choice(["float", "double"])
    pre = rng.choice(PREFIXES)
    noun = rng.choice(NOUNS)
    lines = c_comment(rng, "Scale every %s by k and clamp it to [lo, hi]; returns how many were clipped." % noun)
    inner = ["%s y = a[i] * k;" % t]
    inner += st.chain([("if (y < lo)", ["y = lo;", "clipped++;"]),
                       ("else if (y > hi)", ["y = hi;", "clipped++;"])])
    inner.append("a[i] = y;")
    body = ["size_t clipped = 0;"]
    body += st.block("for (size_t i = 0; i < n; i++)", inner)
    body.append("return clipped;")
    lines += st.block("size_t %s_scale_%s(%s *a, size_t n, %s k, %s lo, %s hi)" % (
        pre, noun, t, t, t, t), body)
    return lines


def code_axpy(rng, st):
    t = rng.choice(["double", "float"])
    lines = []
    if rng.chance(50):
        lines += c_comment(rng, "Dot product of two vectors of length n.")
        body = ["%s s = %s;" % (t, zero_of(t))]
        body += st.block("for (size_t i = 0; i < n; i++)", ["s += x[i] * y[i];"])
        body.append("return s;")
        lines += st.block("%s dot(const %s *x, const %s *y, size_t n)" % (t, t, t), body)
    lines += c_comment(rng, "y += alpha * x, element by element.")
    lines += st.block("void axpy(%s alpha, const %s *x, %s *y, size_t n)" % (t, t, t),
                      st.block("for (size_t i = 0; i < n; i++)", ["y[i] += alpha * x[i];"]))
    return lines


def code_words(rng, st):
    lines = c_comment(rng, "Count words separated by spaces, tabs or newlines.")
    body = ["size_t words = 0;", "int in_word = 0;"]
    inner = st.chain([("if (*s == ' ' || *s == '\\t' || *s == '\\n')", ["in_word = 0;"]),
                      ("else if (!in_word)", ["in_word = 1;", "words++;"])])
    body += st.block("for (; *s; s++)", inner)
    body.append("return words;")
    lines += st.block("size_t count_words(const char *s)", body)
    return lines


def code_stats(rng, st):
    pre = rng.choice(PREFIXES)
    noun = rng.choice(NOUNS)
    lines = c_comment(rng, "Running mean and variance of %s %s (Welford's method)." % (pre, noun))
    lines += st.block("struct %s_stats" % pre, ["long n;", "double mean;", "double m2;"], tail=";")
    body = ["s->n++;", "double d = x - s->mean;", "s->mean += d / (double)s->n;",
            "s->m2 += d * (x - s->mean);"]
    lines += st.block("void %s_stats_add(struct %s_stats *s, double x)" % (pre, pre), body)
    body = ["return s->n > 1 ? s->m2 / (double)(s->n - 1) : 0.0;"]
    lines += st.block("double %s_stats_var(const struct %s_stats *s)" % (pre, pre), body)
    return lines


def code_ema(rng, st):
    t = rng.choice(["double", "float"])
    noun = rng.choice(NOUNS)
    lines = c_comment(rng, "Exponential moving average of the %s, smoothing factor a in (0, 1]." % noun)
    body = st.block("if (n == 0)", ["return;"])
    body.append("%s m = in[0];" % t)
    body += st.block("for (size_t i = 0; i < n; i++)", ["m = a * in[i] + (1 - a) * m;", "out[i] = m;"])
    lines += st.block("void ema_%s(const %s *in, %s *out, size_t n, %s a)" % (noun, t, t, t), body)
    return lines


def code_stack(rng, st):
    pre = rng.choice(PREFIXES)
    t = rng.choice(["int", "long", "double", "char", "uint16_t"])
    depth = rng.choice([16, 32, 64, 100, 256])
    up = pre.upper()
    lines = ["#define %s_STACK_MAX %d" % (up, depth)]
    lines += st.block("struct %s_stack" % pre, ["%s v[%s_STACK_MAX];" % (t, up), "int top;"], tail=";")
    body = st.block("if (s->top >= %s_STACK_MAX)" % up, ["return -1;"])
    body += ["s->v[s->top++] = x;", "return 0;"]
    lines += st.block("int %s_stack_push(struct %s_stack *s, %s x)" % (pre, pre, t), body)
    body = st.block("if (s->top == 0)", ["return -1;"])
    body += ["*x = s->v[--s->top];", "return 0;"]
    lines += st.block("int %s_stack_pop(struct %s_stack *s, %s *x)" % (pre, pre, t), body)
    return lines


CODE_GENS = [(4, code_axpy), (3, code_words), (4, code_stats), (3, code_ema), (5, code_stack),
             (8, code_sum), (6, code_max), (8, code_struct_vec), (8, code_strings),
             (6, code_bsearch), (8, code_list), (6, code_ring), (5, code_matrix),
             (6, code_hash), (6, code_inline), (6, code_state), (4, code_parse),
             (6, code_sort), (6, code_numeric), (4, code_hist), (5, code_point),
             (4, code_main), (5, code_clamp_loop)]


def make_code(rng):
    st = CStyle(rng)
    parts = rng.int(1, 3)
    gens = []
    while len(gens) < parts:
        g = rng.weighted(CODE_GENS)
        if g not in gens:
            gens.append(g)
    lines = []
    for g in gens:
        lines += g(rng, st)
    return "\n".join(lines)


# ======================================================================================
# Domain 3: math (every result computed here with exact integer / Fraction arithmetic)
# ======================================================================================

def p(n):
    """A number as an operand: negative numbers in parentheses."""
    return "(%d)" % n if n < 0 else str(n)


def frac(f):
    f = Fraction(f)
    return str(f.numerator) if f.denominator == 1 else "%d/%d" % (f.numerator, f.denominator)


def term(coef, var, first=False):
    """'3x', '- 3x', '+ x', ... for building polynomials left to right."""
    if coef == 0:
        return ""
    mag = abs(coef)
    body = (var if mag == 1 and var else "%d%s" % (mag, var))
    if first:
        return ("-" if coef < 0 else "") + body
    return ("- " if coef < 0 else "+ ") + body


def poly(coefs_vars):
    """[(c, 'x^2'), (c, 'x'), (c, '')] -> '2x^2 - 3x + 5'."""
    out = []
    for c, v in coefs_vars:
        if c == 0:
            continue
        out.append(term(c, v, first=not out))
    return " ".join(out) if out else "0"


def math_mul(rng):
    a = rng.int(12, 99)
    b = rng.int(11, 99)
    t, u = divmod(b, 10)
    lines = ["Compute %d * %d." % (a, b)]
    if u == 0:
        lines.append("%d * %d = %d * %d * 10 = %d * 10 = %d." % (a, b, a, t, a * t, a * b))
    else:
        lines.append("%d * %d = %d * %d + %d * %d = %d + %d = %d." % (
            a, b, a, t * 10, a, u, a * t * 10, a * u, a * b))
    lines.append("Answer: %d." % (a * b))
    return lines


def math_addsub(rng):
    a = rng.int(100, 9999)
    b = rng.int(10, 9999)
    if rng.chance(50):
        return ["Compute %d + %d." % (a, b), "%d + %d = %d." % (a, b, a + b)]
    if b > a:
        a, b = b, a
    lines = ["Compute %d - %d." % (a, b), "%d - %d = %d." % (a, b, a - b)]
    if rng.chance(50):
        lines.append("Check: %d + %d = %d." % (a - b, b, a))
    return lines


def math_div(rng):
    d = rng.int(3, 19)
    q = rng.int(12, 400)
    r = rng.int(0, d - 1)
    n = d * q + r
    lines = ["Divide %d by %d." % (n, d)]
    lines.append("%d * %d = %d, and %d - %d = %d." % (d, q, d * q, n, d * q, r))
    if r == 0:
        lines.append("So %d / %d = %d exactly." % (n, d, q))
    else:
        lines.append("So %d / %d = %d remainder %d, that is %d + %d/%d." % (
            n, d, q, r, q, r // gcd(r, d), d // gcd(r, d)))
    return lines


def math_order(rng):
    a, b, c, d = rng.int(1, 20), rng.int(2, 9), rng.int(5, 15), rng.int(1, 4)
    e = rng.int(2, 3)
    shape = rng.below(3)
    if shape == 0:
        inner = c - d
        pw = inner ** e
        prod = b * pw
        return ["Evaluate %d + %d * (%d - %d)^%d." % (a, b, c, d, e),
                "First the parentheses: %d - %d = %d." % (c, d, inner),
                "Then the power: %d^%d = %d." % (inner, e, pw),
                "Then the product: %d * %d = %d." % (b, pw, prod),
                "Finally the sum: %d + %d = %d." % (a, prod, a + prod)]
    if shape == 1:
        s1 = a + b
        s2 = c - d
        return ["Evaluate (%d + %d) * (%d - %d)." % (a, b, c, d),
                "%d + %d = %d and %d - %d = %d." % (a, b, s1, c, d, s2),
                "%d * %d = %d." % (s1, s2, s1 * s2),
                "So (%d + %d) * (%d - %d) = %d." % (a, b, c, d, s1 * s2)]
    m = b * c
    return ["Evaluate %d * %d - %d + %d." % (b, c, a, d),
            "Multiplication comes first: %d * %d = %d." % (b, c, m),
            "Then from left to right: %d - %d = %d, and %d + %d = %d." % (
                m, a, m - a, m - a, d, m - a + d),
            "Answer: %d." % (m - a + d)]


def math_linear(rng):
    x = rng.int(-12, 15)
    a = rng.nonzero(-9, 9)
    while a in (1, -1, 0):
        a = rng.nonzero(-9, 9)
    b = rng.int(-30, 30)
    c = a * x + b
    lhs = poly([(a, "x"), (b, "")])
    lines = ["Solve %s = %d." % (lhs, c)]
    if b > 0:
        lines.append("Subtract %d from both sides: %dx = %d - %d = %d." % (b, a, c, b, c - b))
    elif b < 0:
        lines.append("Add %d to both sides: %dx = %d + %d = %d." % (-b, a, c, -b, c - b))
    lines.append("Divide both sides by %d: x = %d / %s = %d." % (a, c - b, p(a), x))
    chk = "Check: %s * %s" % (a, p(x))
    if b != 0:
        chk += " %s %d" % ("+" if b > 0 else "-", abs(b))
        chk += " = %d %s %d" % (a * x, "+" if b > 0 else "-", abs(b))
    chk += " = %d." % c
    lines.append(chk)
    return lines


def math_linear2(rng):
    """ax + b = cx + d."""
    x = rng.int(-10, 12)
    a = rng.int(2, 9)
    c = rng.int(1, 9)
    while c == a:
        c = rng.int(1, 9)
    b = rng.int(-20, 20)
    d = a * x + b - c * x
    lines = ["Solve %s = %s." % (poly([(a, "x"), (b, "")]), poly([(c, "x"), (d, "")]))]
    k = a - c
    lines.append("Subtract %s from both sides: %s = %d." % (
        poly([(c, "x")]), poly([(k, "x"), (b, "")]), d))
    rhs = d - b
    if b != 0:
        lines.append("%s %d %s both sides: %s = %d." % (
            "Subtract" if b > 0 else "Add", abs(b), "from" if b > 0 else "to",
            poly([(k, "x")]), rhs))
    if k != 1:
        lines.append("Divide by %d: x = %d / %s = %d." % (k, rhs, p(k), x))
    else:
        lines.append("So x = %d." % x)
    lines.append("Check: %d * %s %s %d = %d and %d * %s %s %d = %d." % (
        a, p(x), "-" if b < 0 else "+", abs(b), a * x + b,
        c, p(x), "-" if d < 0 else "+", abs(d), c * x + d))
    return lines


def math_system(rng):
    while True:
        x, y = rng.int(-8, 9), rng.int(-8, 9)
        a1, b1, a2, b2 = rng.nonzero(-6, 7), rng.nonzero(-6, 7), rng.nonzero(-6, 7), rng.nonzero(-6, 7)
        det = a1 * b2 - a2 * b1
        if det != 0 and a1 != a2:
            break
    c1 = a1 * x + b1 * y
    c2 = a2 * x + b2 * y
    e1 = poly([(a1, "x"), (b1, "y")])
    e2 = poly([(a2, "x"), (b2, "y")])
    lines = ["Solve the system %s = %d and %s = %d." % (e1, c1, e2, c2)]
    # Eliminate x: multiply eq1 by a2 and eq2 by a1, subtract.
    m1 = [a1 * a2, b1 * a2, c1 * a2]
    m2 = [a2 * a1, b2 * a1, c2 * a1]
    lines.append("Multiply the first equation by %s: %s = %d." % (
        p(a2), poly([(m1[0], "x"), (m1[1], "y")]), m1[2]))
    lines.append("Multiply the second equation by %s: %s = %d." % (
        p(a1), poly([(m2[0], "x"), (m2[1], "y")]), m2[2]))
    ky = m1[1] - m2[1]
    kc = m1[2] - m2[2]
    lines.append("Subtract the second from the first: %s = %d." % (poly([(ky, "y")]), kc))
    lines.append("So y = %d / %s = %d." % (kc, p(ky), y))
    rest = c1 - b1 * y
    lines.append("Put y = %d into the first equation: %s + %s * %s = %d, so %s = %d - %s = %d." % (
        y, poly([(a1, "x")]), p(b1), p(y), c1, poly([(a1, "x")]), c1, p(b1 * y), rest))
    if a1 != 1:
        lines.append("x = %d / %s = %d." % (rest, p(a1), x))
    lines.append("Solution: x = %d, y = %d." % (x, y))
    return lines


def math_quadratic(rng):
    r1 = rng.int(-9, 9)
    r2 = rng.int(-9, 9)
    while r1 == 0 and r2 == 0:
        r2 = rng.int(-9, 9)
    s = r1 + r2
    pr = r1 * r2
    eq = poly([(1, "x^2"), (-s, "x"), (pr, "")])

    def factor(r):
        if r == 0:
            return "x"
        return "(x %s %d)" % ("-" if r > 0 else "+", abs(r))

    lines = ["Solve %s = 0." % eq]
    if r1 == r2:
        lines.append("We need two numbers with product %d and sum %d: %d and %d." % (pr, -s, -r1, -r2))
        lines.append("So %s = %s^2 = 0, and the only root is x = %d." % (eq, factor(r1), r1))
    else:
        lines.append("We need two numbers with product %d and sum %d: %d and %d." % (pr, -s, -r1, -r2))
        lines.append("So %s = %s%s = 0." % (eq, factor(r1), factor(r2)))
        lines.append("Therefore x = %d or x = %d." % (r1, r2))
        if rng.chance(50):
            lines.append("Check: %d + %s = %d and %d * %s = %d." % (r1, p(r2), s, r1, p(r2), pr))
    return lines


def math_fractions(rng):
    b, d = rng.int(2, 12), rng.int(2, 12)
    a, c = rng.int(1, 2 * b), rng.int(1, 2 * d)
    while gcd(a, b) != 1:
        a = rng.int(1, 2 * b)
    while gcd(c, d) != 1:
        c = rng.int(1, 2 * d)
    op = rng.choice(["+", "-", "*"])
    f1, f2 = Fraction(a, b), Fraction(c, d)
    lines = ["Compute %d/%d %s %d/%d." % (a, b, op, c, d)]
    if op in "+-":
        l = b * d // gcd(b, d)
        na, nc = a * (l // b), c * (l // d)
        raw = na + nc if op == "+" else na - nc
        lines.append("The common denominator is %d." % l)
        lines.append("%d/%d %s %d/%d = %d/%d %s %d/%d = %d/%d." % (a, b, op, c, d, na, l, op, nc, l, raw, l))
        res = Fraction(raw, l)
        if res.denominator != l and raw != 0:
            g = gcd(abs(raw), l)
            lines.append("Divide top and bottom by %d: %d/%d = %s." % (g, raw, l, frac(res)))
    else:
        raw_n, raw_d = a * c, b * d
        lines.append("%d/%d * %d/%d = %d/%d." % (a, b, c, d, raw_n, raw_d))
        res = Fraction(raw_n, raw_d)
        if res.denominator != raw_d:
            g = gcd(raw_n, raw_d)
            lines.append("Divide top and bottom by %d: %d/%d = %s." % (g, raw_n, raw_d, frac(res)))
    res = f1 + f2 if op == "+" else (f1 - f2 if op == "-" else f1 * f2)
    lines.append("Answer: %s." % frac(res))
    return lines


def math_percent(rng):
    pct = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 50, 60, 75, 80])
    step = 100 // gcd(pct, 100)
    base = rng.int(max(1, 40 // step), 1200 // step) * step
    val = pct * base // 100
    assert pct * base % 100 == 0
    if rng.chance(50):
        return ["What is %d%% of %d?" % (pct, base),
                "%d%% of %d = %d * %d / 100 = %d / 100 = %d." % (pct, base, pct, base, pct * base, val)]
    price = base
    return ["A coat costs %d dollars and is marked down by %d%%. What is the new price?" % (price, pct),
            "The discount is %d * %d / 100 = %d dollars." % (pct, price, val),
            "The new price is %d - %d = %d dollars." % (price, val, price - val)]


def math_gcd(rng):
    g = rng.int(2, 30)
    a, b = g * rng.int(3, 40), g * rng.int(3, 40)
    if a < b:
        a, b = b, a
    if a == b:
        a += g
    lines = ["Find the greatest common divisor of %d and %d." % (a, b)]
    x, y = a, b
    while y:
        q, r = divmod(x, y)
        lines.append("%d = %d * %d + %d." % (x, q, y, r))
        x, y = y, r
    lines.append("The last nonzero remainder is %d, so gcd(%d, %d) = %d." % (x, a, b, x))
    if rng.chance(50):
        lines.append("Then lcm(%d, %d) = %d * %d / %d = %d." % (a, b, a, b, x, a * b // x))
    return lines


def math_factor(rng):
    primes = [2, 3, 5, 7, 11, 13]
    n = 1
    while True:
        n = 1
        for _ in range(rng.int(3, 6)):
            n *= rng.choice(primes[:rng.int(2, 6)])
        if n not in primes:
            break
    lines = ["Write %d as a product of primes." % n]
    m = n
    steps = []
    exps = []
    for q in primes:
        e = 0
        while m % q == 0:
            if m != q:
                steps.append("%d = %d * %d" % (m, q, m // q))
            m //= q
            e += 1
        if e:
            exps.append((q, e))
    lines.append(", ".join(steps) + ".")
    lines.append("So %d = %s." % (n, " * ".join(
        str(q) if e == 1 else "%d^%d" % (q, e) for q, e in exps)))
    return lines


def math_power(rng):
    b = rng.int(2, 9)
    e = rng.int(2, 6)
    lines = ["Compute %d^%d." % (b, e)]
    lines.append("%d^%d = %s = %d." % (b, e, " * ".join([str(b)] * e), b ** e))
    return lines


WORD_PROBLEMS = [
    ("A crate holds {a} jars. How many jars are in {b} crates?",
     "{b} * {a} = {ab}.", "There are {ab} jars."),
    ("A train travels at {a} kilometres per hour for {b} hours. How far does it go?",
     "distance = speed * time = {a} * {b} = {ab}.", "It travels {ab} kilometres."),
    ("A baker makes {a} loaves each day. How many loaves does she make in {b} days?",
     "{a} * {b} = {ab}.", "She makes {ab} loaves."),
    ("A garden has {b} rows with {a} plants in each row. How many plants are there?",
     "{b} * {a} = {ab}.", "There are {ab} plants."),
    ("Tickets cost {a} dollars each. What do {b} tickets cost?",
     "{b} * {a} = {ab}.", "They cost {ab} dollars."),
]


def math_word(rng):
    if rng.chance(70):
        q, w, ans = rng.choice(WORD_PROBLEMS)
        a, b = rng.int(6, 60), rng.int(3, 25)
        slots = {"a": str(a), "b": str(b), "ab": str(a * b)}
        return [fill(rng, q, slots), fill(rng, w, slots), fill(rng, ans, slots)]
    # sharing with remainder
    k = rng.int(3, 12)
    per = rng.int(4, 30)
    left = rng.int(0, k - 1)
    total = k * per + left
    lines = ["%d marbles are shared equally among %d children. How many does each child get, "
             "and how many are left over?" % (total, k),
             "%d * %d = %d and %d - %d = %d." % (k, per, k * per, total, k * per, left),
             "Each child gets %d marbles and %d %s left over." % (
                 per, left, "is" if left == 1 else "are")]
    return lines


def math_series(rng):
    a = rng.int(-5, 20)
    d = rng.nonzero(-4, 9)
    n = rng.int(5, 40)
    last = a + (n - 1) * d
    s = n * (a + last) // 2
    assert n * (a + last) % 2 == 0
    return ["Find the sum of the first %d terms of the arithmetic sequence %d, %d, %d, ..." % (
                n, a, a + d, a + 2 * d),
            "The common difference is %d, so the last term is %d + (%d - 1) * %s = %d." % (
                d, a, n, p(d), last),
            "The sum is %d * (%d + %s) / 2 = %d * %d / 2 = %d." % (n, a, p(last), n, a + last, s)]


def math_poly_eval(rng):
    a, b, c = rng.nonzero(-5, 6), rng.int(-9, 9), rng.int(-12, 12)
    x = rng.int(-5, 6)
    fx = a * x * x + b * x + c
    name = rng.choice(["p", "f", "g", "q"])
    pe = poly([(a, "x^2"), (b, "x"), (c, "")])
    lines = ["Evaluate %s(x) = %s at x = %d." % (name, pe, x)]
    parts = ["%d * %d" % (a, x * x)]
    vals = [a * x * x]
    if b:
        parts.append("%d * %s" % (b, p(x)))
        vals.append(b * x)
    if c:
        parts.append(p(c))
        vals.append(c)
    lines.append("x^2 = %d, so %s(%d) = %s = %s = %d." % (
        x * x, name, x, " + ".join(parts), " + ".join(p(v) for v in vals), fx))
    return lines


def math_expand(rng):
    a, b, c, d = rng.nonzero(-5, 6), rng.nonzero(-9, 9), rng.nonzero(-5, 6), rng.nonzero(-9, 9)
    f1 = "(%s)" % poly([(a, "x"), (b, "")])
    f2 = "(%s)" % poly([(c, "x"), (d, "")])
    lines = ["Expand %s%s." % (f1, f2)]
    lines.append("Multiply each term: %s." % poly(
        [(a * c, "x^2"), (a * d, "x"), (b * c, "x"), (b * d, "")]))
    lines.append("Collect like terms: %s." % poly([(a * c, "x^2"), (a * d + b * c, "x"), (b * d, "")]))
    return lines


def math_mean(rng):
    n = rng.int(3, 7)
    vals = [rng.int(1, 99) for _ in range(n)]
    if rng.chance(75):                        # mostly whole-number means
        vals[-1] += (-sum(vals)) % n
    s = sum(vals)
    m = Fraction(s, n)
    lines = ["Find the mean of %s." % ", ".join(str(v) for v in vals)]
    lines.append("The sum is %s = %d." % (" + ".join(str(v) for v in vals), s))
    if m.denominator == 1:
        lines.append("There are %d numbers, so the mean is %d / %d = %d." % (n, s, n, s // n))
    else:
        whole, rest = divmod(s, n)
        lines.append("There are %d numbers, so the mean is %d / %d = %s, or %d and %s." % (
            n, s, n, frac(m), whole, frac(Fraction(rest, n))))
    return lines


def math_square_trick(rng):
    t = rng.int(2, 9) * 10
    u = rng.int(1, 9)
    n = t + u
    return ["Compute %d^2 using (a + b)^2 = a^2 + 2ab + b^2." % n,
            "%d^2 = (%d + %d)^2 = %d^2 + 2 * %d * %d + %d^2 = %d + %d + %d = %d." % (
                n, t, u, t, t, u, u, t * t, 2 * t * u, u * u, n * n)]


def math_convert(rng):
    kind = rng.below(3)
    if kind == 0:
        h = rng.int(1, 9)
        mnt = rng.int(0, 59)
        return ["How many minutes are in %d hours and %d minutes?" % (h, mnt),
                "%d * 60 + %d = %d + %d = %d minutes." % (h, mnt, h * 60, mnt, h * 60 + mnt)]
    if kind == 1:
        km = rng.int(1, 40)
        m = rng.int(0, 999)
        return ["Convert %d km %d m to metres." % (km, m),
                "%d * 1000 + %d = %d metres." % (km, m, km * 1000 + m)]
    s = rng.int(100, 20000)
    h, r = divmod(s, 3600)
    mn, sec = divmod(r, 60)
    return ["Write %d seconds in hours, minutes and seconds." % s,
            "%d = %d * 3600 + %d, and %d = %d * 60 + %d." % (s, h, r, r, mn, sec),
            "So %d seconds is %d h %d min %d s." % (s, h, mn, sec)]


MATH_GENS = [(10, math_mul), (7, math_addsub), (7, math_div), (7, math_order), (9, math_linear),
             (6, math_linear2), (6, math_system), (7, math_quadratic), (8, math_fractions),
             (5, math_percent), (5, math_gcd), (5, math_factor), (4, math_power), (6, math_word),
             (4, math_series), (5, math_poly_eval), (5, math_expand), (4, math_mean),
             (3, math_square_trick), (4, math_convert)]


def make_math(rng):
    g = rng.weighted(MATH_GENS)
    lines = g(rng)
    if rng.chance(30):
        lines = ["Exercise %d. %s" % (rng.int(1, 60), lines[0])] + lines[1:]
    return "\n".join(lines)


# A self-check over the whole math file: every line segment made only of numbers,
# + - * / ^ and parentheses, when chained by " = ", must be one exact value.
def _eval_arith(s):
    import ast

    tree = ast.parse(s.replace("^", "**"), mode="eval")

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return Fraction(n.value)
        if type(n).__name__ == "Num":              # Python < 3.8
            return Fraction(n.n)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp):
            l, r = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Add):
                return l + r
            if isinstance(n.op, ast.Sub):
                return l - r
            if isinstance(n.op, ast.Mult):
                return l * r
            if isinstance(n.op, ast.Div):
                return l / r
            if isinstance(n.op, ast.Pow):
                return l ** int(r)
        raise ValueError(s)

    return ev(tree)


def check_math(text):
    import re

    arith = re.compile(r"^[0-9+\-*/^() ]+$")
    tok = re.compile(r"^[0-9+\-*/^()]+$")
    OPS = ("+", "-", "*", "/", "^")
    LEADS = ("Compute", "Evaluate", "Check", "Finally", "Then", "then", "is")
    TRAILS = ("dollars", "metres", "minutes", "exactly")
    checked = 0
    for line in text.split("\n"):
        # split into clauses; take the longest arithmetic tail/head around each " = "
        for clause in re.split(r"[,;:]\s|\.\s|\.$|\band\b|\bso\b|\bSo\b", line):
            segs = [x.strip() for x in clause.split(" = ")]
            if len(segs) < 2:
                continue
            # keep the arithmetic tail of the first segment and head of the last one;
            # a tail or head cut next to an operator belongs to a longer, non-numeric
            # expression ("3x - 15"), so such a clause is skipped
            head = segs[0].split(" ")
            k = len(head)
            while k > 0 and tok.match(head[k - 1]):
                k -= 1
            tail = segs[-1].split(" ")
            j = 0
            while j < len(tail) and tok.match(tail[j]):
                j += 1
            first, last = head[k:], tail[:j]
            if (not first or not last or first[0] in OPS or last[-1] in OPS
                    or (k > 0 and head[k - 1] not in LEADS)
                    or (j < len(tail) and tail[j] not in TRAILS)):
                continue
            segs = [" ".join(first)] + segs[1:-1] + [" ".join(last)]
            if not all(arith.match(x) and x.count("(") == x.count(")") for x in segs):
                continue
            vals = [_eval_arith(x) for x in segs]
            if any(v != vals[0] for v in vals):
                raise AssertionError("math check failed: %r" % line)
            checked += 1
    return checked


# ======================================================================================
# Domain 4: records
# ======================================================================================

STATION_WORDS = ["KESTREL", "HERON", "PLOVER", "CURLEW", "MERLIN", "OSPREY", "LAPWING",
                 "DIPPER", "SKYLARK", "TEAL", "SHRIKE", "GANNET"]
COMPASS = ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W",
           "WNW", "NW", "NNW"]
SENSORS = ["thermometer", "hygrometer", "barometer", "anemometer", "wind_vane", "rain_gauge",
           "pyranometer", "battery", "logger"]
EVENTS = [("battery_low", "battery", "V", 105, 118),
          ("gust", "anemometer", "m/s", 180, 340),
          ("sensor_timeout", "hygrometer", "s", 30, 600),
          ("heater_on", "rain_gauge", "C", -80, 10),
          ("reboot", "logger", "s", 1, 90),
          ("calibration", "barometer", "hPa", -15, 15),
          ("door_open", "logger", "s", 10, 900),
          ("solar_low", "pyranometer", "W/m2", 0, 40)]
LEVELS = {"battery_low": "WARN", "gust": "WARN", "sensor_timeout": "ERROR", "heater_on": "INFO",
          "reboot": "WARN", "calibration": "INFO", "door_open": "INFO", "solar_low": "INFO"}

ITEMS = [("hex bolt M6x20", "HB6", "pcs"), ("hex nut M6", "HN6", "pcs"),
         ("washer 6mm", "WS6", "pcs"), ("wood screw 4x40", "WD4", "pcs"),
         ("copper wire 1.5mm", "CW15", "m"), ("pine board 20x100", "PB2", "m"),
         ("wall plug 8mm", "WP8", "pcs"), ("hinge 75mm", "HG75", "pcs"),
         ("paint white 1l", "PW1", "tin"), ("sandpaper P120", "SP12", "sheet"),
         ("cable tie 200mm", "CT20", "pcs"), ("pipe clamp 22mm", "PC22", "pcs"),
         ("rubber seal 40mm", "RS40", "pcs"), ("fuse 5A", "FU5", "pcs"),
         ("lamp bulb 40W", "LB40", "pcs"), ("glue wood 250ml", "GW25", "bottle"),
         ("padlock 40mm", "PL40", "pcs"), ("rope nylon 8mm", "RN8", "m"),
         ("nail 50mm", "NL50", "kg"), ("tape duct 50m", "TD50", "roll")]
def item_cost(code):
    """A fixed base price in cents per item code (a function of the code only)."""
    h = int.from_bytes(hashlib.sha256(code.encode()).digest()[:4], "big")
    return 5 + h % 2500


WAREHOUSES = ["WH-NORTH", "WH-RIVER", "WH-DEPOT2", "WH-MILL", "WH-EAST", "WH-YARD"]


def tenths(v):
    """An integer in tenths -> '12.3' / '-0.4'."""
    s = "-" if v < 0 else ""
    v = abs(v)
    return "%s%d.%d" % (s, v // 10, v % 10)


def cents(v):
    return "%d.%02d" % (v // 100, v % 100)


def dt_iso(d):
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def station_id(rng):
    return "%s-%02d" % (rng.choice(STATION_WORDS), rng.int(1, 24))


def rand_day(rng):
    import datetime

    return datetime.datetime(2021, 1, 1) + datetime.timedelta(days=rng.int(0, 4 * 365))


def rec_weather_csv(rng):
    import datetime

    sid = station_id(rng)
    t0 = rand_day(rng) + datetime.timedelta(hours=rng.int(0, 23))
    step_min = rng.choice([10, 15, 30, 60])
    n = rng.int(8, 20)
    month = t0.month - 1
    base = [20, 30, 60, 90, 120, 160, 190, 185, 150, 110, 60, 30][month]
    temp = base + rng.int(-40, 40)
    rh = rng.int(40, 95)
    pres = rng.int(9800, 10300)
    wind = rng.int(0, 90)
    wdir = rng.below(16)
    lines = ["# station=%s lat=%s lon=%s elev_m=%d interval_min=%d" % (
        sid, "%d.%03d" % (rng.int(50, 58), rng.int(0, 999)),
        "-%d.%03d" % (rng.int(0, 5), rng.int(0, 999)), rng.int(2, 420), step_min),
        "time,temp_c,rh_pct,pressure_hpa,wind_ms,wind_dir,rain_mm"]
    for k in range(n):
        t = t0 + datetime.timedelta(minutes=step_min * k)
        rain = 0 if rh < 85 or rng.chance(50) else rng.int(1, 25)
        lines.append("%s,%s,%d,%s,%s,%s,%s" % (
            dt_iso(t), tenths(temp), rh, tenths(pres), tenths(wind), COMPASS[wdir], tenths(rain)))
        temp += rng.int(-6, 6)
        rh = max(15, min(100, rh + rng.int(-4, 4)))
        pres += rng.int(-4, 4)
        wind = max(0, wind + rng.int(-15, 15))
        wdir = (wdir + rng.int(-1, 1)) % 16
    return "\n".join(lines)


def rec_daily_summary(rng):
    import datetime

    sid = station_id(rng)
    d0 = rand_day(rng)
    n = rng.int(5, 14)
    lines = ["date,station,t_min_c,t_max_c,t_mean_c,rain_mm,sun_h"]
    base = [20, 30, 60, 90, 120, 160, 190, 185, 150, 110, 60, 30][d0.month - 1]
    for k in range(n):
        d = d0 + datetime.timedelta(days=k)
        tmin = base - rng.int(10, 70)
        tmax = base + rng.int(10, 90)
        tmean = (tmin + tmax) // 2 if (tmin + tmax) % 2 == 0 else (tmin + tmax - 1) // 2
        lines.append("%s,%s,%s,%s,%s,%s,%s" % (
            d.strftime("%Y-%m-%d"), sid, tenths(tmin), tenths(tmax), tenths(tmean),
            tenths(0 if rng.chance(45) else rng.int(1, 220)), tenths(rng.int(0, 140))))
    return "\n".join(lines)


def rec_events(rng):
    import datetime

    sid = station_id(rng)
    t = rand_day(rng) + datetime.timedelta(minutes=rng.int(0, 1439))
    lines = []
    for _ in range(rng.int(4, 12)):
        ev, sensor, unit, lo, hi = rng.choice(EVENTS)
        v = rng.int(lo, hi)
        val = tenths(v) if unit in ("V", "m/s", "C", "hPa") else str(v)
        lines.append("%s level=%s station=%s sensor=%s event=%s value=%s unit=%s" % (
            dt_iso(t), LEVELS[ev], sid, sensor, ev, val, unit))
        t += datetime.timedelta(minutes=rng.int(1, 600))
    return "\n".join(lines)


def rec_inventory(rng):
    import datetime

    wh = rng.choice(WAREHOUSES)
    d = rand_day(rng) + datetime.timedelta(hours=rng.int(7, 18), minutes=rng.int(0, 59))
    items = rng.sample(ITEMS, rng.int(3, 8))
    lines = []
    for name, code, unit in items:
        sku = "%s-%04d" % (code, rng.int(1, 9999))
        qty = rng.int(0, 5000)
        reorder = rng.choice([50, 100, 200, 250, 500])
        lines.append('sku=%s name="%s" warehouse=%s bin=%s%d-%02d qty=%d unit=%s '
                     'reorder_at=%d unit_cost=%s status=%s updated=%s' % (
                         sku, name, wh, rng.choice("ABCDEFG"), rng.int(1, 9), rng.int(1, 40),
                         qty, unit, reorder, cents(item_cost(code) * rng.int(90, 110) // 100),
                         "reorder" if qty < reorder else "ok", dt_iso(d)))
        d += datetime.timedelta(minutes=rng.int(1, 40))
    return "\n".join(lines)


def rec_ledger(rng):
    import datetime

    name, code, unit = rng.choice(ITEMS)
    sku = "%s-%04d" % (code, rng.int(1, 9999))
    wh = rng.choice(WAREHOUSES)
    bal = rng.int(0, 2000)
    d = rand_day(rng)
    lines = ["# ledger sku=%s warehouse=%s unit=%s opening_balance=%d" % (sku, wh, unit, bal),
             "date,ref,movement,qty,balance"]
    for _ in range(rng.int(5, 15)):
        d += datetime.timedelta(days=rng.int(0, 4))
        if bal < 100 or rng.chance(35):
            mv, q = "in", rng.int(50, 1500)
            bal += q
            ref = "PO-%05d" % rng.int(1, 99999)
        else:
            mv, q = "out", rng.int(1, min(bal, 600))
            bal -= q
            ref = "SO-%05d" % rng.int(1, 99999)
        lines.append("%s,%s,%s,%d,%d" % (d.strftime("%Y-%m-%d"), ref, mv, q, bal))
    lines.append("# closing_balance=%d" % bal)
    return "\n".join(lines)


def make_records(rng):
    kinds = [(28, rec_weather_csv), (16, rec_daily_summary), (18, rec_events),
             (20, rec_inventory), (18, rec_ledger)]
    return rng.weighted(kinds)(rng)


# ======================================================================================
# Driver
# ======================================================================================

MAKERS = {"prose": make_prose, "code": make_code, "math": make_math, "records": make_records}


def build_domain(name):
    rng = domain_rng(name)
    make = MAKERS[name]
    docs = []
    size = 0
    seen = {}
    while size < TARGET_BYTES:
        doc = make(rng).strip("\n")
        if doc in seen:          # drop exact duplicates (possible for tiny math docs)
            continue
        seen[doc] = True
        assert "\n\n" not in doc and doc.strip(), (name, doc)
        piece = doc + "\n\n"
        docs.append(piece)
        size += len(piece)
    text = "".join(docs)
    text.encode("ascii")        # raises if anything is not 7-bit ASCII
    return text


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python3 data/make_demo.py OUTDIR\n")
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    texts = {}
    for name in DOMAINS:
        texts[name] = build_domain(name)
    n = check_math(texts["math"])
    if n < 1000:
        raise AssertionError("math self-check covered only %d equalities" % n)
    texts["all"] = "".join(texts[name] for name in DOMAINS)
    files = [name + ".txt" for name in DOMAINS] + ["all.txt"]
    sums = []
    for fn in files:
        data = texts[fn[:-4]].encode("ascii")
        with open(os.path.join(out, fn), "wb") as f:
            f.write(data)
        sums.append("%s  %s\n" % (hashlib.sha256(data).hexdigest(), fn))
        sys.stderr.write("%-12s %8d bytes %6d documents\n" % (
            fn, len(data), texts[fn[:-4]].count("\n\n")))
    with open(os.path.join(out, "SHA256SUMS"), "wb") as f:
        f.write("".join(sums).encode("ascii"))
    sys.stderr.write("math self-check: %d equalities verified\n" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
