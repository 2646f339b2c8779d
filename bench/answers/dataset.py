"""The answer check's material: five short policy documents of a made-up company (written
for Haven, three in English and two in Russian) and questions whose answer is one fact of
one document.

``expected`` lists the ways the fact may be written (any one counts); ``document`` names the
file that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAVEL = """# Travel policy

Employees book business trips through the travel desk at least ten days before departure.
Hotel rooms in Zurich are capped at 250 CHF per night; in every other city the cap is
180 EUR per night. Flights shorter than six hours are booked in economy class.

A trip whose total cost is above 1,500 EUR needs the approval of the finance director,
Martin Keller. The daily allowance for meals is 45 EUR. Travellers file the expense report
on form TR-310 within 14 days of their return.
"""

LEAVE = """# Leave policy

Every employee has 30 working days of paid annual leave per calendar year. Up to 5 unused
days may be carried over, and they must be taken before 31 March of the next year.

Parental leave is 16 weeks at full pay, for either parent. A sick note from a doctor is
needed when an illness lasts longer than 3 days. Leave is requested at least 10 days in
advance on form HR-204 and approved by the team lead.
"""

SECURITY = """# IT security rules

Passwords must be at least 14 characters long. Multi-factor authentication is required for
e-mail and for the VPN. Every company laptop has its disk encrypted.

A lost laptop or any suspected security incident is reported to the security desk within
2 hours, by calling extension 4411. Servers are backed up every night at 02:00, and backups
are kept for 35 days. Software not on the approved list is installed only after a ticket
in category SEC-7 is approved.
"""

TRAINING_RU = """# Положение об обучении

Компания оплачивает сотруднику курсы и конференции на сумму до 60 000 рублей в год.
Заявка на обучение подаётся не позднее чем за 21 день до начала курса по форме ОБ-12.

Заявку согласует руководитель отдела развития Елена Смирнова. Сотрудник, обучение которого
оплатила компания, обязуется проработать в ней не менее 12 месяцев после окончания курса.
Сертификат об окончании курса передаётся в отдел кадров в течение 5 рабочих дней.
"""

OFFICE_RU = """# Правила офиса

Офис в Казани открыт с 8:00 до 20:00 по будням. На парковке у здания 40 мест для
сотрудников, место бронируется накануне через портал.

Пропуск нового сотрудника служба безопасности выдаёт в течение 3 рабочих дней. Гостей
регистрируют на ресепшене не позднее чем за 24 часа до визита. Для гостей работает сеть
Wi-Fi с именем Haven-Guest, пароль меняется каждый понедельник.
"""

DOCUMENTS: dict[str, str] = {
    "travel-policy.md": TRAVEL,
    "leave-policy.md": LEAVE,
    "it-security.md": SECURITY,
    "obuchenie.md": TRAINING_RU,
    "ofis.md": OFFICE_RU,
}


@dataclass(frozen=True)
class Question:
    text: str
    expected: tuple[str, ...]
    document: str


QUESTIONS: tuple[Question, ...] = (
    Question("What is the hotel cap per night in Zurich?", ("250",), "travel-policy.md"),
    Question("How much is the hotel cap outside Zurich?", ("180",), "travel-policy.md"),
    Question("Who approves trips that cost more than 1,500 EUR?", ("Keller",), "travel-policy.md"),
    Question("What is the daily meal allowance on a business trip?", ("45",), "travel-policy.md"),
    Question("Which form is used for the travel expense report?", ("TR-310",), "travel-policy.md"),
    Question("Within how many days must the expense report be filed?", ("14",), "travel-policy.md"),
    Question(
        "How many days of paid annual leave does an employee get?", ("30",), "leave-policy.md"
    ),
    Question("How long is parental leave?", ("16",), "leave-policy.md"),
    Question("How many unused leave days can be carried over?", ("5",), "leave-policy.md"),
    Question("After how many days of illness is a sick note needed?", ("3",), "leave-policy.md"),
    Question("On which form is leave requested?", ("HR-204",), "leave-policy.md"),
    Question("How long must passwords be?", ("14",), "it-security.md"),
    Question("Which extension do I call to report a lost laptop?", ("4411",), "it-security.md"),
    Question("How long are backups kept?", ("35",), "it-security.md"),
    Question(
        "At what time are the servers backed up?", ("02:00", "2:00", "2 am"), "it-security.md"
    ),
    Question(
        "Сколько денег в год компания оплачивает на обучение?",
        ("60 000", "60000", "60,000", "60 тысяч"),
        "obuchenie.md",
    ),
    Question("За сколько дней подаётся заявка на обучение?", ("21",), "obuchenie.md"),
    Question("Кто согласует заявку на обучение?", ("Смирнов",), "obuchenie.md"),
    Question(
        "Сколько месяцев нужно проработать после оплаченного обучения?", ("12",), "obuchenie.md"
    ),
    Question("По какой форме подаётся заявка на обучение?", ("ОБ-12",), "obuchenie.md"),
    Question("Во сколько открывается офис в Казани?", ("8:00", "08:00"), "ofis.md"),
    Question("Сколько мест на парковке для сотрудников?", ("40",), "ofis.md"),
    Question("За сколько часов нужно зарегистрировать гостя?", ("24",), "ofis.md"),
    Question("Как называется гостевая сеть Wi-Fi?", ("Haven-Guest",), "ofis.md"),
)


def _squash(text: str) -> str:
    # "60 000", "60,000" and "60000" are one figure; case never matters.
    return "".join(ch for ch in text.casefold() if not ch.isspace() and ch not in ",\u00a0")


def contains_fact(answer: str, question: Question) -> bool:
    squashed = _squash(answer)
    return any(_squash(fact) in squashed for fact in question.expected)
