"""Email input: .eml / JSON / JSONL / text files and directories -> Email or EmailParseError."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcascade.email_parse import parse_eml, parse_json_object, parse_text, read_inputs
from mailcascade.errors import EmailParseError
from mailcascade.html_text import html_to_text
from mailcascade.types import Email

FIXTURES = Path(__file__).parent / "fixtures" / "emails"
LIMIT = 100_000
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def read_all(*paths: str | Path, max_bytes: int = LIMIT) -> list[Email | EmailParseError]:
    return list(read_inputs(list(paths), max_bytes=max_bytes))


def read_one(path: str | Path, max_bytes: int = LIMIT) -> Email | EmailParseError:
    items = read_all(path, max_bytes=max_bytes)
    assert len(items) == 1, items
    return items[0]


def email(name: str) -> Email:
    item = read_one(FIXTURES / name)
    assert isinstance(item, Email), item
    return item


def error(path: str | Path, max_bytes: int = LIMIT) -> EmailParseError:
    item = read_one(path, max_bytes)
    assert isinstance(item, EmailParseError), item
    assert item.source == str(path)
    return item


# ---------------------------------------------------------------- .eml


def test_plain_eml_headers_and_body() -> None:
    e = email("plain.eml")
    assert e.id == "20250303091400.4711@mail.example.de"  # Message-ID without <>
    assert e.subject == "Wo ist meine Bestellung? Order #10482"  # RFC 2047 decoded, folding undone
    assert e.sender == "Jörg Müller <joerg@example.de>"
    assert e.source == str(FIXTURES / "plain.eml")
    assert e.body.startswith("Hello,\n\nI ordered a kettle ten days ago and it still has not arrived.\nCould you")
    assert e.body.endswith("Thanks,\nJörg")
    assert all(line == line.rstrip() for line in e.body.split("\n"))  # trailing whitespace stripped
    assert e.attachments == ()


def test_multipart_alternative_prefers_plain_text() -> None:
    e = email("alternative.eml")
    assert e.body == "Does the trail jacket run small? I usually wear a medium."
    assert "HTML VERSION" not in e.body


def test_html_only_email_becomes_readable_text() -> None:
    e = email("html_only.eml")
    assert e.body == (
        "Hi team,\n\n"
        "I returned the blender on Friday & haven't got my refund yet.\n"
        "Order: #20931\n"
        "Amount: €49.90\n\n"
        "- Blender X200\n"
        "- Spare jug\n\n"
        "Return label RL-5521\n\n"
        "Best,\nSam"
    )
    for hidden in ("tracking", "color", "Newsletter template", "comment"):
        assert hidden not in e.body
    assert "body converted from HTML" in e.meta["warnings"]


def test_quoted_printable_latin1() -> None:
    e = email("qp_latin1.eml")
    assert e.sender == "Renée François <renee@example.fr>"
    assert e.subject == "Rücksendung der Jacke"
    # soft line break joined, =F6=DF etc. decoded with the declared ISO-8859-1
    assert e.body == (
        "Bonjour, je voudrais retourner la veste größe M, elle est trop étroite aux épaules. Coût du retour : 5 £ ?"
    )
    assert "warnings" not in e.meta


def test_base64_utf8() -> None:
    e = email("base64_utf8.eml")
    assert e.body == "こんにちは。炊飯器の内鍋はフッ素加工ですか？ Is the inner pot non-stick? 🍚"


def test_unknown_charset_falls_back_to_utf8_and_says_so() -> None:
    e = email("unknown_charset.eml")
    assert e.body == "I ordered the mug in crème but got a grey one. Can you swap it?"
    assert e.meta["warnings"] == ["unknown charset 'x-klingon-8'; decoded as utf-8"]


def test_wrong_declared_charset_falls_back_to_windows_1252() -> None:
    e = email("wrong_charset.eml")  # says utf-8, is cp1252, with CRLF line ends
    assert e.body == "Falta la taza de café en mi pedido. ¿Pueden enviarla? “Gracias”"
    assert e.meta["warnings"] == ["text is not valid utf-8; decoded as windows-1252"]


LATIN1_PLAIN = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\nCaf\xe9 froid\n"


def test_eml_raw_utf8_subject_and_from_stay_utf8_even_with_a_latin1_body() -> None:
    data = b"From: Ren\xc3\xa9e <r@example.fr>\nSubject: Caf\xc3\xa9 r\xc3\xa9clamation\n" + LATIN1_PLAIN
    e = parse_eml(data, "utf8.eml")
    assert (e.subject, e.sender, e.body) == ("Café réclamation", "Renée <r@example.fr>", "Café froid")


def test_eml_raw_latin1_subject_and_from_use_the_bodys_declared_charset() -> None:
    data = b"From: Ren\xe9e <r@example.fr>\nSubject: Caf\xe9 r\xe9clamation\n  pli\xe9e\n" + LATIN1_PLAIN
    e = parse_eml(data, "latin1.eml")
    assert (e.subject, e.sender, e.body) == ("Café réclamation pliée", "Renée <r@example.fr>", "Café froid")


def test_eml_raw_8bit_subject_uses_the_charset_of_the_first_text_part() -> None:
    data = (b"Subject: R\xfccksendung\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n\n"
            b"--b\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xf6\xdfe M\n--b--\n")
    e = parse_eml(data, "multi.eml")
    assert (e.subject, e.body) == ("Rücksendung", "Größe M")


def test_eml_raw_8bit_subject_without_a_charset_falls_back_to_windows_1252() -> None:
    e = parse_eml(b"Subject: \x80100 for a caf\xe9 mug?\n\nhi\n", "cp1252.eml")
    assert e.subject == "€100 for a café mug?"


def test_eml_rfc2047_subject_and_from_are_unchanged() -> None:
    data = b"From: =?utf-8?q?Ren=C3=A9e?= <r@example.fr>\nSubject: =?iso-8859-1?q?Caf=E9?= froid\n" + LATIN1_PLAIN
    e = parse_eml(data, "rfc2047.eml")
    assert (e.subject, e.sender) == ("Café froid", "Renée <r@example.fr>")


def test_attachments_are_ignored_but_listed() -> None:
    e = email("attachments.eml")
    assert e.body == "The invoice attached charges me twice for shipping. Screenshot attached too."
    assert e.attachments == ("logo.png", "invoice.pdf", "Rechnung März.txt")  # RFC 2231 name decoded
    assert "shipping 4.99" not in e.body  # a text/plain attachment is not body text


def test_eml_broken_boundary_is_broken_mime() -> None:
    err = error(FIXTURES / "broken_boundary.eml")
    assert err.reason.startswith("broken MIME")
    assert "boundary" in err.reason


def test_eml_undecodable_base64_body_is_broken_mime() -> None:
    err = error(FIXTURES / "broken_base64.eml")
    assert err.reason == "broken MIME: the text body could not be decoded (invalid base64 in the text/plain part)"


def test_eml_without_headers_is_refused() -> None:
    err = error(FIXTURES / "no_headers.eml")
    assert err.reason.startswith("no email headers found")


def test_eml_multipart_with_only_an_attachment_and_no_subject() -> None:
    data = (
        b"From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n"
        b"--B\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=scan.pdf\n"
        b"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--B--\n"
    )
    with pytest.raises(EmailParseError) as info:
        parse_eml(data, "scan.eml")
    assert info.value.reason == "empty email (no subject and no text body (only attachments: scan.pdf))"
    assert info.value.source == "scan.eml"


def test_eml_forwarded_message_is_an_attachment_not_body() -> None:
    data = (
        b"From: a@example.com\nSubject: Fwd: receipt\nContent-Type: multipart/mixed; boundary=Z\n\n"
        b"--Z\nContent-Type: text/plain\n\nSee the receipt below.\n"
        b"--Z\nContent-Type: message/rfc822\n\nFrom: shop@example.com\nSubject: Your receipt\n\nTotal: 20.00\n--Z--\n"
    )
    e = parse_eml(data, "fwd.eml")
    assert e.body == "See the receipt below."
    assert e.attachments == ("attached message: Your receipt",)


def test_eml_without_message_id_uses_file_stem() -> None:
    e = parse_eml(b"From: a@example.com\nSubject: Hi\n\nWhere is my parcel?\n", "inbox/ticket-77.eml")
    assert (e.id, e.subject, e.body, e.sender) == ("ticket-77", "Hi", "Where is my parcel?", "a@example.com")


# ---------------------------------------------------------------- plain text


def test_text_with_subject_line() -> None:
    e = email("note.txt")
    assert e.id == "note"
    assert e.subject == "Can I change my delivery address?"
    assert e.body.startswith("Hi,\nI just placed order #30117")
    assert e.body.endswith("12 Rose Lane instead?")


def test_text_without_subject_line() -> None:
    e = email("body_only.txt")
    assert e.subject == ""
    assert e.body == "My discount code SPRING10 was not applied at checkout.\nPlease refund the difference."


def test_text_bom_crlf_and_trailing_whitespace_are_normalised() -> None:
    e = email("crlf_bom.txt")
    assert e.subject == "Broken zipper"
    assert e.body == "The zipper on my bag broke after a week.\nCan I get a replacement?"


def test_text_in_windows_1252() -> None:
    e = email("cp1252.txt")
    assert e.subject == "Reçu manquant"
    assert e.body == "Je n’ai pas reçu ma facture – merci de me l’envoyer."
    assert e.meta["warnings"] == ["decoded as windows-1252"]


def test_parse_text_keeps_body_length_otherwise() -> None:
    body = "line one\n\n\n   indented line\n" + "x" * 5000
    e = parse_text(body.encode(), "long.txt")
    assert e.body == body


# ---------------------------------------------------------------- JSON and JSONL


def test_json_single_flat_object() -> None:
    e = email("single.json")
    assert (e.id, e.subject, e.sender) == ("web-form-118", "Promo code not working", "lena@example.com")
    assert e.body.startswith("The code WELCOME15")
    assert e.meta == {"extra": {"channel": "web form"}}


def test_json_list_with_flat_and_eval_case_shapes() -> None:
    items = read_all(FIXTURES / "list.json")
    assert all(isinstance(i, Email) for i in items)
    first, second = items
    assert isinstance(first, Email) and isinstance(second, Email)
    assert first.id == "list-1"  # derived from the file stem and the item number
    assert first.source == f"{FIXTURES / 'list.json'}#1"
    assert second.id == "eval-042"
    assert second.subject == "Charged twice"
    assert second.sender == "kim@example.com"
    assert second.meta == {
        "expected": {"department": "billing", "product_ids": []},
        "meta": {"author": "fixture", "difficulty": "easy"},
    }


def test_invalid_json() -> None:
    err = error(FIXTURES / "invalid.json")
    assert err.reason == "invalid JSON: Expecting ',' delimiter at line 1 column 44"


def test_json_wrong_field_type() -> None:
    assert error(FIXTURES / "wrong_type.json").reason == "field 'subject' must be a string, got number"


def test_json_empty_email_and_empty_list() -> None:
    assert error(FIXTURES / "empty_email.json").reason == "empty email (no subject and no body)"
    assert error(FIXTURES / "empty_list.json").reason == "no emails in file (the JSON list is empty)"


def test_jsonl_bad_lines_do_not_stop_the_good_ones() -> None:
    path = FIXTURES / "emails.jsonl"
    items = read_all(path)
    summary = [(type(i).__name__, i.source) for i in items]
    assert summary == [
        ("Email", f"{path}:1"),
        ("EmailParseError", f"{path}:3"),  # line 2 is blank: skipped
        ("Email", f"{path}:4"),
        ("EmailParseError", f"{path}:5"),
        ("Email", f"{path}:6"),
        ("EmailParseError", f"{path}:7"),
        ("Email", f"{path}:8"),
    ]
    emails = [i for i in items if isinstance(i, Email)]
    assert [e.id for e in emails] == ["j-1", "emails-4", "6", "j-8"]  # missing id: stem + line; int id kept
    assert emails[2].meta == {"expected": {"department": "products"}}
    errors = [i for i in items if isinstance(i, EmailParseError)]
    assert errors[0].reason == "invalid JSON: Expecting ',' delimiter at column 37"
    assert errors[1].reason == "expected a JSON object, got array"
    assert errors[2].reason == "empty email (no subject and no body)"


def test_jsonl_line_over_the_limit_is_skipped_unread(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    big = '{"subject": "big", "body": "' + "a" * 5000 + '"}'
    path.write_text(f'{{"id": "a", "body": "first"}}\n{big}\n{{"id": "c", "body": "last"}}\n', encoding="utf-8")
    items = read_all(path, max_bytes=1000)
    assert [getattr(i, "id", None) for i in items] == ["a", None, "c"]
    err = items[1]
    assert isinstance(err, EmailParseError)
    assert err.source == f"{path}:2"
    assert err.reason == f"line is {len(big) + 1:,} bytes, over the size limit of 1,000 bytes"


def test_parse_json_object_directly() -> None:
    e = parse_json_object({"text": "Body via alias", "sender": "x@example.com", "attachments": ["a.pdf"]}, "in.jsonl:3")
    assert (e.id, e.body, e.sender, e.attachments) == ("in-3", "Body via alias", "x@example.com", ("a.pdf",))
    with pytest.raises(EmailParseError, match="expected a JSON object, got string"):
        parse_json_object("hello", "x.json")
    with pytest.raises(EmailParseError, match="field 'from' must be a string, got object"):
        parse_json_object({"body": "hi", "from": {"name": "A"}}, "x.json")
    with pytest.raises(EmailParseError, match="field 'id' must be a string or an integer, got boolean"):
        parse_json_object({"id": True, "body": "hi"}, "x.json")


# ---------------------------------------------------------------- unknown extensions, binary, size, missing


def test_unknown_extensions_are_sniffed() -> None:
    assert email("ticket").sender == "helpdesk-export@shop.example"  # RFC 822 headers
    assert email("ticket").subject == "Exported ticket 9912"
    assert email("export.data").id == "exp-1"  # JSON
    notes = email("notes.md")  # plain text
    assert (notes.subject, notes.body[:16]) == ("", "Customer called:")


@pytest.mark.parametrize("name", ["image.png", "image.txt", "image.eml", "image.json", "image.jsonl", "image"])
def test_binary_file_is_not_an_email(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(PNG_BYTES * 20)
    assert error(path).reason == "binary file, not an email"


def test_oversized_file_is_refused_by_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.eml"
    with path.open("wb") as handle:  # sparse: 4 GiB on paper, so reading it whole would be noticed
        handle.truncate(4 * 1024**3)
    assert error(path, max_bytes=1000).reason == "file is 4,294,967,296 bytes, over the size limit of 1,000 bytes"


def test_size_limit_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "edge.txt"
    path.write_bytes(b"Subject: edge\n\n" + b"y" * 85)
    assert len(path.read_bytes()) == 100
    assert isinstance(read_one(path, max_bytes=100), Email)
    assert error(path, max_bytes=99).reason == "file is 100 bytes, over the size limit of 99 bytes"


def test_empty_and_whitespace_files() -> None:
    assert error(FIXTURES / "empty.txt").reason == "empty file"
    assert error(FIXTURES / "whitespace.txt").reason == "empty file (only whitespace)"


def test_missing_path(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.eml").reason == "no such file or directory"


def test_directory_of_mixed_files(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(FIXTURES / "mixed", root)
    (root / "sub" / "z_photo.jpg").write_bytes(PNG_BYTES)
    items = read_all(root)
    summary = [(type(i).__name__, Path(i.source).relative_to(root).as_posix()) for i in items]
    assert summary == [
        ("Email", "a_message.eml"),
        ("Email", "b_batch.jsonl:1"),
        ("Email", "b_batch.jsonl:2"),
        ("Email", "c_single.json"),
        ("Email", "d_note.txt"),
        ("Email", "e_ticket"),
        ("Email", "sub/f_nested.txt"),
        ("EmailParseError", "sub/g_broken.json"),
        ("EmailParseError", "sub/z_photo.jpg"),
    ]  # sorted, recursive, hidden files and folders skipped
    ids = [i.id for i in items if isinstance(i, Email)]
    assert ids[:4] == ["mixed-a@example.com", "mixed-b1", "mixed-b2", "mixed-c"]


def test_inputs_keep_their_order_and_empty_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    items = read_all(FIXTURES / "note.txt", tmp_path / "empty", tmp_path / "missing.json", FIXTURES / "single.json")
    assert [type(i).__name__ for i in items] == ["Email", "EmailParseError", "EmailParseError", "Email"]
    assert isinstance(items[1], EmailParseError)
    assert items[1].reason == "directory contains no files"


# ---------------------------------------------------------------- robustness


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"From: a@b\nContent-Type: multipart/mixed; boundary=x\n\n--x\n", b'{"body": 1}', b"[{}]"]),
    ),
    suffix=st.sampled_from([".eml", ".json", ".jsonl", ".txt", ".bin", ""]),
)
def test_read_inputs_never_raises_on_arbitrary_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        items = read_all(path, max_bytes=300)
    assert items, "every input yields at least one record"
    for item in items:
        assert isinstance(item, Email | EmailParseError)
        if isinstance(item, EmailParseError):
            assert item.reason and item.source.startswith(str(path))
        else:
            assert item.subject or item.body
            assert "\r" not in item.body and "\ufeff" not in item.body[:1]
            assert all(line == line.rstrip() for line in item.body.split("\n"))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/!-[]&;#pbrdivscript tyle\n x")), max_size=200))
def test_html_to_text_never_raises(html: str) -> None:
    text = html_to_text(html)
    assert "\r" not in text and text == text.strip("\n")
