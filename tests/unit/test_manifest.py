"""Reading manifests as shops export them: BOMs, delimiters, extra columns, mappings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InvalidManifest
from producer.manifest import (
    Manifest,
    ManifestRow,
    ReadOptions,
    RowError,
    parse_columns,
    read_manifest,
)


def write(folder: Path, text: str, name: str = "m.csv", encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def good(manifest: Manifest) -> list[ManifestRow]:
    return [row for row in manifest.rows if isinstance(row, ManifestRow)]


def bad(manifest: Manifest) -> dict[int, RowError]:
    return {row.line: row for row in manifest.rows if isinstance(row, RowError)}


def test_excel_bom_does_not_hide_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffsku,image,prompt\r\nA-1,a.png,red\r\n")
    manifest = read_manifest(path)
    assert [row.fields for row in good(manifest)] == [
        {"sku": "A-1", "image": "a.png", "prompt": "red"}]
    assert manifest.notes == []


def test_shopify_export_with_columns_mapping_and_a_note_for_the_rest(tmp_path: Path) -> None:
    header = ("Handle,Title,Body (HTML),Vendor,Type,Tags,Published,Option1 Name,Variant SKU,"
              "Image Src,Image Position,SEO Title")
    path = write(tmp_path, header + "\nshoe-1,Shoe,<p>Nice</p>,ACME,Shoes,,TRUE,Size,S1,"
                 "https://cdn.example.com/s1.jpg,1,Shoe\n")
    manifest = read_manifest(path, ReadOptions(parse_columns(["sku=Handle,image=Image Src"])),
                             required=("sku",))
    assert [row.fields for row in good(manifest)] == [
        {"sku": "shoe-1", "image": "https://cdn.example.com/s1.jpg"}]
    assert len(manifest.notes) == 1
    note = manifest.notes[0]
    assert note.startswith("ignoring 10 columns") and "'Vendor'" in note
    assert "'Handle'" not in note and "'Image Src'" not in note


def test_field_names_match_headers_loosely(tmp_path: Path) -> None:
    path = write(tmp_path, "SKU , Image,Negative Prompt\nA,a.png,blurry\n")
    assert good(read_manifest(path))[0].fields == {
        "sku": "A", "image": "a.png", "negative_prompt": "blurry"}


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    path = write(tmp_path, delimiter.join(["sku", "image", "prompt", "strength"])
                 + "\n" + delimiter.join(["A", "a.png", "red, then blue", "0,6"]) + "\n")
    assert good(read_manifest(path))[0].fields == {
        "sku": "A", "image": "a.png", "prompt": "red, then blue", "strength": 0.6}


def test_explicit_delimiter_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "sku;image\nA;a,b.png\n")
    rows = good(read_manifest(path, ReadOptions(delimiter=";")))
    assert rows[0].fields == {"sku": "A", "image": "a,b.png"}
    with pytest.raises(InvalidManifest, match="--delimiter"):
        read_manifest(path, ReadOptions(delimiter=";;"))


def test_crlf_blank_lines_and_empty_rows_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "\r\nsku,image\r\n\r\nA,a.png\r\n,\r\n\r\nB,b.png\r\n,,\r\n")
    manifest = read_manifest(path)
    assert [(row.line, row.fields["sku"]) for row in good(manifest)] == [(4, "A"), (7, "B")]
    assert bad(manifest) == {}


def test_spreadsheet_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "sku,width,seed,guidance,steps\nA,1024.0,7,3.5,\"9,0\"\n"
                 "B,30.5,1,1,1\nC,1e3,x,1,1\nD,nan,1,1,1\n")
    manifest = read_manifest(path)
    assert good(manifest)[0].fields == {"sku": "A", "width": 1024, "seed": 7,
                                        "guidance": 3.5, "steps": 9}
    assert isinstance(good(manifest)[0].fields["width"], int)
    errors = bad(manifest)
    assert errors[3].field == "width" and "whole number" in errors[3].reason
    assert errors[4].field == "seed" and "not a number" in errors[4].reason
    assert errors[5].field == "width"
    assert (errors[3].sku, errors[4].sku) == ("B", "C")


def test_row_errors_name_line_and_field_and_keep_going(tmp_path: Path) -> None:
    path = write(tmp_path, "sku,image\nA,a.png\n,b.png\nC,c.png,surplus\nD,d.png\n")
    manifest = read_manifest(path)
    assert [row.fields["sku"] for row in good(manifest)] == ["A", "D"]
    errors = bad(manifest)
    assert (errors[3].field, errors[3].reason) == ("sku", "sku: missing")
    assert errors[4].sku == "C" and "3 cells but the header has 2" in errors[4].reason


def test_missing_required_column_names_it_and_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "Handle,Image Src\nA,a.png\n")
    with pytest.raises(InvalidManifest) as info:
        read_manifest(path)
    assert "no 'sku' column" in str(info.value) and "'Handle'" in str(info.value)
    with pytest.raises(InvalidManifest, match="no 'prompt' column"):
        read_manifest(path, ReadOptions({"sku": "Handle"}), required=("sku", "prompt"))


def test_mapped_column_that_is_not_there(tmp_path: Path) -> None:
    path = write(tmp_path, "Handle,Image Src\nA,a.png\n")
    with pytest.raises(InvalidManifest) as info:
        read_manifest(path, ReadOptions({"sku": "Variant SKU"}))
    assert "--columns: sku='Variant SKU'" in str(info.value)


@pytest.mark.parametrize(("spec", "words"), [
    ("sku", "expected FIELD=COLUMN, got 'sku'"),
    ("=Handle", "expected FIELD=COLUMN"),
    ("sku=", "expected FIELD=COLUMN"),
    ("colour=Farbe", "unknown field 'colour'"),
    ("sku=A,sku=B", "sku is mapped twice"),
])
def test_malformed_columns_option(spec: str, words: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_columns([spec])
    assert str(info.value).startswith("--columns: ") and words in str(info.value)


def test_columns_option_parts_and_repeats() -> None:
    assert parse_columns(["sku=Handle, image = Image Src", "prompt=Edit"]) == {
        "sku": "Handle", "image": "Image Src", "prompt": "Edit"}


def test_duplicate_column_for_a_field_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sku,image,Image\nA,a.png,b.png\n")
    with pytest.raises(InvalidManifest, match="appears 2 times"):
        read_manifest(path)


def test_cp1252_file_is_refused_naming_line_and_byte_or_read_when_told(tmp_path: Path) -> None:
    path = write(tmp_path, "sku,prompt\nA,plain\nB,caf\u00e9 cr\u00e8me \u20ac\n",
                 encoding="cp1252")
    with pytest.raises(InvalidManifest) as info:
        read_manifest(path)
    message = str(info.value)
    assert "line 3" in message and "0xe9" in message and "UTF-8" in message
    assert "--encoding cp1252" in message
    rows = good(read_manifest(path, ReadOptions(encoding="cp1252")))
    assert rows[1].fields["prompt"] == "caf\u00e9 cr\u00e8me \u20ac"


def test_unknown_encoding_names_the_option(tmp_path: Path) -> None:
    path = write(tmp_path, "sku\nA\n")
    with pytest.raises(InvalidManifest, match="--encoding: unknown encoding 'klingon'"):
        read_manifest(path, ReadOptions(encoding="klingon"))


@pytest.mark.parametrize("name", ["missing.csv", "folder"])
def test_unreadable_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidManifest, match="cannot read"):
        read_manifest(tmp_path / name)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match="no header"):
        read_manifest(write(tmp_path, "\ufeff\r\n\r\n"))


def test_jsonl_mapping_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    lines = [{"Handle": "A", "src": "a.png", "vendor": "x", "width": 32.0},
             {"Handle": "B", "prompt": ["not", "text"]},
             {"Handle": 7, "src": "c.png"}]
    text = "\ufeff" + "\n".join(json.dumps(line) for line in lines) + "\n\n[1]\n{oops\n"
    path = write(tmp_path, text, name="m.jsonl")
    manifest = read_manifest(path, ReadOptions({"sku": "Handle", "image": "src"}))
    assert [row.fields for row in good(manifest)] == [
        {"sku": "A", "image": "a.png", "width": 32}, {"sku": "7", "image": "c.png"}]
    errors = bad(manifest)
    assert errors[2].field == "prompt" and "must be text" in errors[2].reason
    assert "JSON object" in errors[5].reason and "not valid JSON" in errors[6].reason
    assert manifest.notes == ["ignoring keys no field uses: 'vendor'"]
    with pytest.raises(InvalidManifest, match=r"no row of m\.jsonl has the key 'Variant'"):
        read_manifest(path, ReadOptions({"sku": "Variant"}))


def test_reading_options_describe_only_what_changed() -> None:
    assert ReadOptions().describe() == {}
    assert ReadOptions({"sku": "Handle"}, ";", "cp1252").describe() == {
        "columns": {"sku": "Handle"}, "delimiter": ";", "encoding": "cp1252"}
