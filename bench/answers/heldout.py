"""A held-out check of the grounding check's figure-in-context rule: documents and answers
written apart from the question set of ``dataset.py`` (and never used to choose the rule),
two English and two Russian.

Each case is a question, an answer and whether the answer's figure is the right one. The
wrong answers copy a real figure of the same document from another sentence, as small models
do; the right ones answer briefly, paraphrase or quote. ``quoted`` adds, for every sentence
of the documents that holds a figure, the sentence itself and the sentence after a lead-in,
as answers that quote their source (none may be marked).
"""

from __future__ import annotations

from dataclasses import dataclass

PROCUREMENT = """# Procurement rules

Any purchase above 5,000 EUR needs three written quotes. Orders are placed through the
purchasing portal within 7 working days of approval. Supplier invoices are paid 30 days after
receipt. Every supplier is reviewed once every 12 months by the procurement lead, Sara Lind.
Office supplies up to 200 EUR a month are bought without approval.
"""

LAB = """# Laboratory safety

Safety glasses are worn at all times in lab B2. Fire extinguishers are inspected every
6 months. Chemical waste is collected on Thursdays and stored for no more than 90 days.
Eye wash stations are flushed every 7 days for 3 minutes. New staff complete a 4-hour safety
course within 10 days of starting.
"""

REMOTE_RU = """# Удалённая работа

Сотрудник может работать из дома до 3 дней в неделю. Заявление подаётся за 5 рабочих дней
через портал. Компания компенсирует домашний интернет до 1 500 рублей в месяц. Рабочий
ноутбук выдаётся на 36 месяцев. За удалённую работу отвечает Ольга Белова, внутренний
номер 2205.
"""

CANTEEN_RU = """# Столовая

Столовая работает с 11:30 до 15:00. Комплексный обед стоит 350 рублей, стажёры получают
скидку 50 процентов. Меню публикуется каждую пятницу. Заказ на корпоративное мероприятие
принимается за 10 дней, не меньше чем на 15 человек.
"""

DOCUMENTS = {
    "procurement.md": PROCUREMENT,
    "lab.md": LAB,
    "udalenka.md": REMOTE_RU,
    "stolovaya.md": CANTEEN_RU,
}


@dataclass(frozen=True)
class Case:
    document: str
    question: str
    answer: str
    right: bool


CASES: tuple[Case, ...] = (
    # procurement
    Case("procurement.md", "How many quotes does a big purchase need?", "Three quotes.", True),
    Case(
        "procurement.md",
        "Above what amount are three quotes needed?",
        "Three written quotes are needed above 5,000 EUR.",
        True,
    ),
    Case(
        "procurement.md",
        "When are supplier invoices paid?",
        "Invoices are paid 30 days after they are received.",
        True,
    ),
    Case("procurement.md", "When are supplier invoices paid?", "The answer is 7 days.", False),
    Case(
        "procurement.md",
        "How often are suppliers reviewed?",
        "Suppliers are reviewed every 30 months.",
        False,
    ),
    Case(
        "procurement.md",
        "How often are suppliers reviewed?",
        "Once every 12 months, by Sara Lind.",
        True,
    ),
    Case(
        "procurement.md",
        "How much can be spent on office supplies without approval?",
        "Up to 5,000 EUR a month.",
        False,
    ),
    Case(
        "procurement.md",
        "Within how many days is an order placed?",
        "An order is placed within 12 days.",
        False,
    ),
    # lab
    Case("lab.md", "How often are fire extinguishers inspected?", "Every 6 months.", True),
    Case(
        "lab.md",
        "How often are fire extinguishers inspected?",
        "Fire extinguishers are inspected every 90 days.",
        False,
    ),
    Case(
        "lab.md",
        "How long may chemical waste be stored?",
        "Chemical waste can be kept for up to 90 days.",
        True,
    ),
    Case("lab.md", "How long may chemical waste be stored?", "It is stored for 10 days.", False),
    Case(
        "lab.md",
        "How long is the safety course for new staff?",
        "The safety course takes 4 hours.",
        True,
    ),
    Case(
        "lab.md",
        "How long is the safety course for new staff?",
        "The course lasts 3 minutes.",
        False,
    ),
    Case("lab.md", "How often are eye wash stations flushed?", "Every 7 days.", True),
    # remote work
    Case(
        "udalenka.md",
        "Сколько дней в неделю можно работать из дома?",
        "Из дома можно работать до 3 дней в неделю.",
        True,
    ),
    Case(
        "udalenka.md",
        "Сколько дней в неделю можно работать из дома?",
        "Ответ: 5 дней.",
        False,
    ),
    Case(
        "udalenka.md",
        "Какую сумму компенсируют за интернет?",
        "Компенсация за интернет — до 1 500 рублей в месяц.",
        True,
    ),
    Case(
        "udalenka.md",
        "На какой срок выдаётся рабочий ноутбук?",
        "Ноутбук выдаётся на 5 месяцев.",
        False,
    ),
    Case(
        "udalenka.md",
        "На какой срок выдаётся рабочий ноутбук?",
        "На 36 месяцев.",
        True,
    ),
    Case(
        "udalenka.md",
        "Какой внутренний номер у ответственной за удалённую работу?",
        "Внутренний номер 2205, Ольга Белова.",
        True,
    ),
    # canteen
    Case("stolovaya.md", "Сколько стоит обед?", "Обед стоит 350 рублей.", True),
    Case("stolovaya.md", "Сколько стоит обед?", "Комплексный обед стоит 50 процентов.", False),
    Case(
        "stolovaya.md",
        "За сколько дней заказывают корпоративное мероприятие?",
        "Заказ принимается за 15 дней.",
        False,
    ),
    Case(
        "stolovaya.md",
        "За сколько дней заказывают корпоративное мероприятие?",
        "За 10 дней до мероприятия.",
        True,
    ),
    Case(
        "stolovaya.md",
        "Какая скидка у стажёров?",
        "Стажёры получают скидку 50 процентов.",
        True,
    ),
    Case("stolovaya.md", "Какая скидка у стажёров?", "Скидка для стажёров 15 процентов.", False),
)
