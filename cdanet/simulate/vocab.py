"""The simulator's fixed vocabulary: latent topics, their words, genres, categories and names.

Everything here is data, not logic. The planted cross-domain structure hangs on one idea: a movie
and a book of the same latent topic share the topic's title words (whose GloVe vectors cluster
around a topic direction) and carry semantically related genre / category names, e.g. movie genre
"Science Fiction" and book category path "Books > Science Fiction & Fantasy > Science Fiction".
"""

from __future__ import annotations

#: The latent topics shared by the movie and book domains (index = topic id).
AMAZON_TOPICS: tuple[str, ...] = (
    "romance", "mystery", "scifi", "fantasy", "history", "comedy", "horror", "kids",
)

#: The latent topics of the Taobao domains; they only drive category ids, prices and tastes.
TAOBAO_TOPICS: tuple[str, ...] = (
    "apparel", "beauty", "electronics", "home", "food", "baby", "sports", "stationery",
)

#: Title words of each topic, used by both domains. Lowercase; titles capitalise them.
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "romance": (
        "love", "heart", "kiss", "wedding", "bride", "passion", "desire", "lover", "romance",
        "sweetheart", "valentine", "affair", "embrace", "promise", "forever", "darling", "honeymoon",
        "proposal", "summer", "tender", "longing", "beloved", "engagement", "flirt", "rose",
    ),
    "mystery": (
        "murder", "detective", "secret", "clue", "shadow", "crime", "killer", "suspect", "witness",
        "conspiracy", "deception", "alibi", "evidence", "inspector", "vanishing", "cipher", "motive",
        "betrayal", "enigma", "riddle", "midnight", "stranger", "fugitive", "silence", "trap",
    ),
    "scifi": (
        "star", "galaxy", "alien", "robot", "planet", "space", "cyborg", "orbit", "starship",
        "android", "quantum", "nebula", "galactic", "colony", "asteroid", "laser", "invasion",
        "mars", "cosmos", "future", "mutant", "clone", "station", "voyager", "wormhole",
    ),
    "fantasy": (
        "dragon", "wizard", "magic", "sword", "kingdom", "quest", "sorcerer", "elf", "throne",
        "spell", "enchanted", "legend", "prophecy", "realm", "witch", "knight", "crown", "fairy",
        "dwarf", "amulet", "oracle", "mage", "dragons", "rune", "griffin",
    ),
    "history": (
        "war", "empire", "battle", "revolution", "soldier", "general", "king", "queen", "ancient",
        "civil", "history", "century", "republic", "dynasty", "victory", "army", "frontier",
        "pioneer", "nation", "liberty", "colonial", "medieval", "emperor", "conquest", "veteran",
    ),
    "comedy": (
        "funny", "laugh", "crazy", "party", "joke", "silly", "wacky", "hilarious", "comedy", "fool",
        "goofy", "prank", "clown", "giggle", "chaos", "mischief", "vacation", "roommate", "nerd",
        "buddy", "mayhem", "blunder", "sitcom", "zany", "humor",
    ),
    "horror": (
        "ghost", "haunted", "zombie", "vampire", "demon", "curse", "blood", "nightmare", "evil",
        "terror", "scream", "grave", "witchcraft", "possessed", "monster", "fear", "darkness",
        "corpse", "exorcist", "undead", "slasher", "crypt", "dread", "sinister", "phantom",
    ),
    "kids": (
        "puppy", "bunny", "teddy", "toy", "adventure", "friends", "princess", "pony", "kitten",
        "dinosaur", "bear", "pirate", "treasure", "rainbow", "circus", "alphabet", "bedtime",
        "piglet", "elephant", "balloon", "giraffe", "mouse", "duckling", "playground", "fun",
    ),
}

#: Topic-free title words; their GloVe vectors carry no topic direction.
NEUTRAL_WORDS: tuple[str, ...] = (
    "the", "last", "first", "return", "night", "day", "house", "city", "road", "home", "world",
    "life", "man", "woman", "girl", "boy", "story", "journey", "time", "new", "lost", "dark",
    "little", "great", "black", "white", "red", "blue", "golden", "silver", "river",
    "island", "mountain", "garden", "winter", "spring", "autumn", "morning", "evening", "family",
    "sisters", "brothers", "stone", "fire", "water", "wind", "storm", "light", "dream", "song",
    "letter", "bridge", "window", "door", "tale", "game", "legacy", "edge",
)

#: Words that only appear in title templates of one domain (format words).
MOVIE_TEMPLATE_WORDS: tuple[str, ...] = (
    "season", "collection", "edition", "special", "complete", "series", "volume", "dvd", "blu",
    "ray", "director", "cut", "movie", "trilogy", "box", "set",
)
BOOK_TEMPLATE_WORDS: tuple[str, ...] = (
    "novel", "book", "series", "volume", "chronicles", "saga", "edition", "stories", "guide",
    "memoir", "tales", "part", "other",
)

#: Glue words and punctuation tokens that titles contain; present in the GloVe file like in
#: glove.6B (which has tokens such as "'s", ":" and "(").
GLUE_TOKENS: tuple[str, ...] = (
    "of", "and", "a", "in", "to", "at", "on", "'s", "s", ":", "(", ")", ",", "-", "&", '"', "'",
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10",
)

#: Movie genres per topic (the leaf of the category path "Movies & TV" > "Movies" > genre).
MOVIE_GENRES: dict[str, tuple[str, ...]] = {
    "romance": ("Romance", "Drama"),
    "mystery": ("Mystery & Suspense", "Thriller"),
    "scifi": ("Science Fiction", "Action & Adventure"),
    "fantasy": ("Fantasy", "Fairy Tales"),
    "history": ("Documentary", "Military & War"),
    "comedy": ("Comedy", "Stand-Up Comedy"),
    "horror": ("Horror", "Cult Movies"),
    "kids": ("Kids & Family", "Animation"),
}

#: Book category paths per topic below the root "Books": (parent, leaf); the leaf is the category.
BOOK_CATEGORIES: dict[str, tuple[tuple[str, str], ...]] = {
    "romance": (("Romance", "Contemporary Romance"), ("Romance", "Historical Romance")),
    "mystery": (("Mystery, Thriller & Suspense", "Mystery"), ("Mystery, Thriller & Suspense", "Thrillers & Suspense")),
    "scifi": (("Science Fiction & Fantasy", "Science Fiction"),),
    "fantasy": (("Science Fiction & Fantasy", "Fantasy"), ("Teen & Young Adult", "Fantasy & Magic")),
    "history": (("History", "World History"), ("Biographies & Memoirs", "Historical")),
    "comedy": (("Humor & Entertainment", "Humor"), ("Literature & Fiction", "Humorous Fiction")),
    "horror": (("Literature & Fiction", "Horror"), ("Teen & Young Adult", "Horror & Ghost Stories")),
    "kids": (("Children's Books", "Animals"), ("Children's Books", "Early Learning")),
}

MOVIE_ROOT = ("Movies & TV", "Movies")
BOOK_ROOT = "Books"

#: Person names for directors and writers (first [initial.] last, made unique by construction).
FIRST_NAMES: tuple[str, ...] = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret",
    "Donald", "Sandra", "Steven", "Ashley", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle",
    "Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Melissa", "George", "Deborah", "Edward",
    "Stephanie", "Ronald", "Rebecca", "Timothy", "Laura", "Jason", "Helen", "Jeffrey", "Sharon",
    "Ryan", "Cynthia", "Gary", "Kathleen",
)
LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson",
    "Martin", "Lee", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
    "O'Brien", "O'Connor", "Phillips", "Evans", "Turner", "Parker", "Collins", "Edwards", "Stewart",
    "Morris", "Murphy", "Cook", "Rogers", "Morgan", "Peterson", "Cooper", "Reed", "Bailey", "Bell",
    "Kelly", "Howard", "Ward", "Cox", "Richardson", "Wood", "Watson", "Brooks", "Bennett", "Gray",
    "James", "Reyes", "Hughes",
)

#: Syllables of invented words: distractor words of the GloVe file and out-of-vocabulary names
#: in titles (like the character names of real titles that glove.6B lacks).
SYLLABLES: tuple[str, ...] = (
    "ba", "be", "bi", "bo", "bu", "ka", "ke", "ki", "ko", "ku", "da", "de", "di", "do", "du", "fa",
    "fe", "fi", "fo", "ga", "ge", "go", "ha", "he", "hi", "ho", "ja", "jo", "la", "le", "li", "lo",
    "lu", "ma", "me", "mi", "mo", "mu", "na", "ne", "ni", "no", "nu", "pa", "pe", "pi", "po", "ra",
    "re", "ri", "ro", "ru", "sa", "se", "si", "so", "su", "ta", "te", "ti", "to", "tu", "va", "ve",
    "vi", "vo", "za", "ze", "zo", "th", "sh", "ch", "qu", "x", "n", "r", "l", "m", "s", "k",
)

#: Non-ASCII invented names: titles stay valid UTF-8 with multi-byte characters, as real ones do.
ACCENTED_NAMES: tuple[str, ...] = ("Amélie", "Zoë", "Renée", "José", "Björn", "Léon", "Chloé", "Søren")

#: Short review texts by rating (2018/2023 formats); plain ASCII without quotes or backslashes.
REVIEW_TEXTS: dict[int, tuple[str, ...]] = {
    1: ("Terrible. Could not finish it.", "Waste of money.", "Did not work for me at all."),
    2: ("Disappointing overall.", "Some good moments but mostly dull.", "Not what I expected."),
    3: ("It was okay.", "Average, nothing special.", "Decent but forgettable."),
    4: ("Really enjoyed this one.", "Very good, would recommend.", "Solid and entertaining."),
    5: ("Loved it!", "One of the best I have seen in years.", "Absolutely wonderful, five stars."),
}
REVIEW_SUMMARIES: dict[int, str] = {
    1: "One Star", 2: "Two Stars", 3: "Three Stars", 4: "Four Stars", 5: "Five Stars",
}
