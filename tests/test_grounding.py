"""The grounding check as plain functions: which values an answer states that its passages do not."""

import pytest

from bot.grounding import best_sentences, cited_numbers, copied_share, extract_values, proper_names, unsupported

PASSAGE = ("Plus costs $4.99 per month or $49 per year. Returns are accepted within 60 days. "
           "Write to support@fernway.example or call +1 (555) 010-4477, 9:00-17:00. See https://fernway.example/plans.")
NAMES = {"Plus", "Premium", "Thermo"}


@pytest.mark.parametrize(
    "answer, flagged",
    [
        ("Plus costs $4.99 per month [1].", []),
        ("Plus costs $5.99 per month [1].", ["$5.99"]),
        ("It is 49 dollars a year, or $4.990 monthly.", []),  # same numbers written differently
        ("Returns are accepted within 30 days.", ["30"]),
        ("Mail support@fernway.example today.", []),
        ("Mail help@fernway.example today.", ["help@fernway.example"]),
        ("Call +1 555 010 4477.", []),  # same digits, other spacing
        ("Call +1 (555) 010-9999.", ["+1 (555) 010-9999"]),
        ("We open at 9:00.", []),
        ("We open at 8:30.", ["8:30"]),
        ("Details: https://fernway.example/plans.", []),
        ("Details: https://fernway.example/pricing.", ["https://fernway.example/pricing"]),
        ("The cheapest option is Premium at $4.99.", ["Premium"]),
        ("Premium is not mentioned here.", []),  # sentence-initial capitals are not names
        ("Plus [2] costs $4.99 [1].", []),  # citation marks are not numbers
    ],
)
def test_values_missing_from_the_passages_are_flagged(answer, flagged):
    assert unsupported(answer, [PASSAGE], NAMES) == flagged


def test_values_are_extracted_by_kind():
    kinds = [(v.kind, v.text) for v in extract_values(PASSAGE, NAMES)]
    assert ("number", "$4.99") in kinds and ("number", "60") in kinds
    assert ("email", "support@fernway.example") in kinds
    assert ("phone", "+1 (555) 010-4477") in kinds
    assert ("url", "https://fernway.example/plans") in kinds
    assert ("time", "9:00") in kinds


def test_evidence_is_only_the_passages_given():
    assert unsupported("So Plus costs $4.99.", ["Premium costs $9.99."], NAMES) == ["Plus", "$4.99"]


def test_cited_numbers_keep_order_and_drop_impossible_ones():
    assert cited_numbers("A [2], B [1][2], C [7].", 4) == [2, 1]


def test_proper_names_are_capitalised_mid_sentence_words():
    texts = ["The Plus plan and the Premium plan. Our Plus plan is popular with Premium users.",
             "Free shipping. Shipping is free for Plus members; Thermo is the device."]
    names = proper_names(texts)
    assert {"Plus", "Premium"} <= names and "Free" not in names and "Shipping" not in names


def test_best_sentences_prefer_the_kind_of_value_asked_for():
    text = ("New accounts can try Premium free for 30 days. The trial starts when you tap Start free trial in the "
            "app. At the end of the trial you move to the Free plan; we send a reminder 3 days before the trial ends.")
    question = "How long is the free trial?"
    assert "30 days" not in best_sentences(text, question)
    assert best_sentences(text, question, kind="duration").startswith("New accounts can try Premium free for 30 days.")


def test_best_sentences_break_a_tie_for_the_one_holding_the_kind_asked():
    # both share "api" and "key"; the first also "create", the second a count of API keys
    text = "Premium subscribers can create personal API keys under Account > Developer. Up to 5 API keys per account."
    question = "How many API keys can I create?"
    assert best_sentences(text, question, 1, kind="count api key") == "Up to 5 API keys per account."
    assert best_sentences(text, question, 1) == "Premium subscribers can create personal API keys under Account > Developer."


def test_best_sentences_picks_the_ones_about_the_question():
    text = "We ship to Canada. Plus costs $4.99 per month. Returns take 60 days."
    assert best_sentences(text, "How much does Plus cost per month?", limit=1) == "Plus costs $4.99 per month."
    assert best_sentences(text, "plus cost returns", limit=2) == "Plus costs $4.99 per month. Returns take 60 days."


# (question, kind, (heading, text) of the passage that answers it, (heading, text) of one that does not)
FITS = [
    # the heading names what the price is for
    ("What's the monthly price of Premium?", "price", ("Pricing Premium", "- $9.99 per month or $99 per year"),
     ("Pricing Ultra", "- $17.49 per month or $174 per year\n- Everything in Premium")),
    # "How long" asks the kind of value; it does not make "How long we keep data" the topic
    ("How long until a deleted account is gone?", "duration",
     ("Deleting your account", "Your account is deleted permanently after 30 days."),
     ("How long we keep data", "| Deleted data | kept for 30 days |")),
    # a word every passage has ("thermostat") tells them apart less than one only one has ("return")
    ("How many days do I have to return a thermostat?", "duration",
     ("Returns", "You can return any product within 60 days of delivery."),
     ("Display", "Connect the thermostat to a USB charger for 30 minutes.")),
]


@pytest.mark.parametrize("question, kind, right, wrong", FITS)
def test_the_sentence_that_fits_the_question_best(question, kind, right, wrong):
    from bot.grounding import best_fit, fit, term_weights

    weights = term_weights([f"{h} {t}" for h, t in (right, wrong)] + ["A thermostat in a home."])
    assert best_fit(right[1], question, kind, right[0], weights) > best_fit(wrong[1], question, kind, wrong[0], weights)
    assert fit(right[1], question, kind, right[0], weights) == best_fit(right[1], question, kind, right[0], weights)


def test_term_weights_fall_with_the_share_of_texts_holding_the_word():
    from bot.grounding import term_weights

    w = term_weights(["Returns of a thermostat.", "A thermostat display.", "A thermostat plan."])
    assert w["return"] == pytest.approx(1.0) and w["thermostat"] == pytest.approx(0.5)


COPY_PASSAGE = "Invitations expire after 7 days. A home can have up to 8 members on every plan."


@pytest.mark.parametrize("answer, frames, low, high", [
    ("Invitations expire after 7 days. [1]", (), 1.0, 1.0),
    ("Invitations expire after 7 days. [1]", ("", ""), 1.0, 1.0),  # the `none` voice has no frames
    ("Happy to help! Invitations expire after 7 days. [1] Have a wonderful day!",
     ("Happy to help!", "Have a wonderful day!"), 1.0, 1.0),
    ("Happy to help! Invitations expire after 7 days. [1] Have a wonderful day!", (), 0.3, 0.5),  # frames count
    ("Happy to help! Have a renewal payment fails, we deleted wire to help!", ("Happy to help!",), 0.0, 0.0),
    ("A home can have up to 7 days on every plan.", (), 0.6, 0.9),  # a splice: mostly copied
    ("", (), 0.0, 0.0),
    ("8 [1]", (), 1.0, 1.0),
    ("He!", (), 0.0, 0.0),
])
def test_copied_share_of_word_pairs(answer, frames, low, high):
    assert low <= copied_share(answer, [COPY_PASSAGE], frames) <= high


@pytest.mark.parametrize("question, kind, holds, lacks", [
    ("How much is one room sensor?", "price", "Room sensors cost $39 each.", "The battery lasts about 2 years."),
    ("What does Premium cost per year?", "price", "Premium is €99 a year.", "Premium covers up to 10 homes."),
    ("What is your support phone number?", "phone", "Call +1 (555) 010-4477.", "Set up 2FA on your new phone."),
    ("Which e-mail address do I write to?", "email", "Write to help@fernway.example.", "We answer e-mail within a day."),
    ("How long is the free trial?", "duration", "The trial lasts 30 days.", "We send a reminder before it ends."),
    ("How many days do I have to return it?", "duration", "Returns within 60 days.", "Returns are free."),
    ("How fast do refunds arrive?", "duration", "Refunds within 5 business days.", "Refunds go to your card."),
    ("How many backup codes do I get?", "count backup code", "You get 10 backup codes.", "Set up 2FA on your new phone [1]."),
    ("How many backup codes do I get?", "count backup code", "Up to 10 new backup codes.", "Recovery takes 3 business days."),
    ("How many backup codes do I get?", "count backup code", "See [1] [2] [3]: 10 backup codes.", "[12] backup codes are kept."),
    ("How many household members can share a home?", "count household member", "A home can have up to 8 members.",
     "Invitations expire after 7 days."),
    ("How many can I add?", "count", "You can add 5.", "You can add as many as you like."),
    ("Where is your postal address?", "address", "Fernway Home, 418 Alder Street, Suite 300, Portland.",
     "Express orders need a street address."),
    ("What is the mailing address of your office?", "address", "Write to P.O. Box 1234, Reno.",
     "Walk 3 steps down the road."),
    ("How do I change my billing address?", "", "Under Account > Billing.", ""),
    ("Which e-mail address do I use?", "email", "Use help@fernway.example.", "Use the app."),
    ("Can I use Alexa with my thermostat?", "", "Alexa works with it.", ""),
    ("How much run time did homes save?", "", "Homes saved 15% of run time.", ""),
    ("How do I charge the sensor?", "", "It takes a coin battery.", ""),
])
def test_the_kind_of_value_a_question_asks_for(question, kind, holds, lacks):
    from bot.grounding import asked_value, carries

    assert asked_value(question) == kind
    assert carries(holds, kind)
    assert carries(lacks, kind) is (kind == "")
