"""Write the bundled review samples (our own sentences, built from phrase lists; no outside corpus).

    python data/make_samples.py   # rewrites review.sample.{en,ko}.tsv and review.unlabeled.en.txt
"""
import random
from pathlib import Path

EN_ITEMS = ["headphones", "blender", "phone case", "backpack", "coffee maker", "keyboard", "desk lamp",
            "running shoes", "vacuum cleaner", "water bottle", "charger", "rice cooker", "jacket", "monitor",
            "toaster", "mouse", "tent", "kettle", "speaker", "watch"]
EN_POSITIVE = ["works perfectly", "is worth every penny", "exceeded my expectations", "feels really sturdy",
               "arrived quickly and well packed", "is exactly as described", "is the best purchase I made this year",
               "is comfortable to use all day", "has great battery life", "looks even better in person",
               "is easy to set up", "does the job brilliantly", "is quiet and efficient", "is well made"]
EN_NEGATIVE = ["stopped working after a week", "is a complete waste of money", "broke on the first day",
               "feels cheap and flimsy", "arrived damaged", "is nothing like the pictures", "is way too loud",
               "has terrible battery life", "is uncomfortable and badly designed", "keeps disconnecting",
               "smells of plastic", "was missing parts", "is hard to set up", "overheats quickly"]
EN_POS_TAIL = ["Highly recommended.", "I would buy it again.", "Five stars.", "My family loves it.",
               "Great value.", "Very happy with it.", "", "Thank you!"]
EN_NEG_TAIL = ["I want a refund.", "Do not buy this.", "One star.", "Very disappointed.",
               "Customer service never replied.", "Returning it.", "", "Avoid."]
EN_OPENERS = ["This {item}", "The {item}", "My new {item}", "The {item} I ordered", "Honestly, this {item}"]

KO_ITEMS = ["이어폰", "믹서기", "가방", "커피머신", "키보드", "운동화", "청소기", "충전기", "밥솥", "자켓", "모니터", "텐트"]
KO_POSITIVE = ["정말 좋아요", "가격 대비 최고예요", "기대 이상이에요", "튼튼하고 예뻐요", "배송이 빨랐어요",
               "설명이랑 똑같아요", "조용하고 성능이 좋아요", "사용하기 편해요", "디자인이 마음에 들어요"]
KO_NEGATIVE = ["일주일 만에 고장났어요", "돈이 아까워요", "첫날부터 망가졌어요", "싸구려 느낌이에요",
               "파손되어 왔어요", "사진이랑 너무 달라요", "소음이 너무 심해요", "냄새가 나요", "부품이 빠져 있었어요"]
KO_POS_TAIL = ["강력 추천합니다.", "재구매 의사 있어요.", "만족합니다.", "가족들도 좋아해요.", "", "감사합니다!"]
KO_NEG_TAIL = ["환불 원해요.", "사지 마세요.", "너무 실망했어요.", "반품합니다.", "", "비추입니다."]


def english(rng, n):
    lines = []
    for i in range(n):
        positive = i % 2 == 0
        opener = rng.choice(EN_OPENERS).format(item=rng.choice(EN_ITEMS))
        phrase = rng.choice(EN_POSITIVE if positive else EN_NEGATIVE)
        tail = rng.choice(EN_POS_TAIL if positive else EN_NEG_TAIL)
        lines.append(("positive" if positive else "negative", f"{opener} {phrase}. {tail}".strip()))
    return lines


def korean(rng, n):
    lines = []
    for i in range(n):
        positive = i % 2 == 0
        phrase = rng.choice(KO_POSITIVE if positive else KO_NEGATIVE)
        tail = rng.choice(KO_POS_TAIL if positive else KO_NEG_TAIL)
        lines.append(("positive" if positive else "negative", f"{rng.choice(KO_ITEMS)} {phrase}. {tail}".strip()))
    return lines


def write(path, lines):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in lines), encoding="utf-8")


if __name__ == "__main__":
    here = Path(__file__).parent
    rng = random.Random(20261122)
    english_lines, korean_lines = english(rng, 480), korean(rng, 240)
    rng.shuffle(english_lines)
    rng.shuffle(korean_lines)
    write(here / "review.sample.en.tsv", english_lines)
    write(here / "review.sample.ko.tsv", korean_lines)
    # unlabelled sentences from another seed, for trying classify_plm.py
    (here / "review.unlabeled.en.txt").write_text(
        "".join(text + "\n" for _, text in english(random.Random(7), 12)), encoding="utf-8")
