import pyarrow.compute as pc
import pytest

from egoray.data.ek100 import hms_to_seconds, read_ek100_csv, split_from_name
from egoray.data.raw import InputError
from tests.conftest import EK100_CSV


def test_real_validation_csv():
    raw = read_ek100_csv(EK100_CSV.read_bytes(), EK100_CSV.name)
    assert raw.num_rows == 9668
    assert raw["issue"].null_count == 9668
    assert set(raw["split"].to_pylist()) == {"val"}
    first = raw.slice(0, 1).to_pylist()[0]
    assert first["narration_id"] == "P01_11_0"
    assert first["video_uid"] == "P01_11"
    assert (first["t_start"], first["t_end"]) == (0.0, 1.89)
    assert (first["verb"], first["noun"], first["raw_text"]) == ("take", "plate", "take plate")
    assert pc.all(pc.greater_equal(raw["t_end"], raw["t_start"])).as_py()


def test_hms_parsing():
    import pyarrow as pa

    out = hms_to_seconds(pa.array(["00:01:02.50", "1:00:00.0", "bad", None, "00:00:07"]))
    assert out.to_pylist() == [62.5, 3600.0, None, None, 7.0]


def test_bad_timestamps_and_missing_columns():
    data = b"narration_id,video_id,start_timestamp,stop_timestamp,narration\nP1_0,P1,00:00:01.00,oops,take cup\n"
    raw = read_ek100_csv(data, "EPIC_100_train.csv")
    assert raw["issue"].to_pylist() == ["bad_timestamp"]
    assert raw["split"].to_pylist() == ["train"]
    with pytest.raises(InputError, match="missing column"):
        read_ek100_csv(b"narration_id,video_id\nP1_0,P1\n", "x.csv")


def test_split_from_name():
    assert split_from_name("EPIC_100_validation.csv") == "val"
    assert split_from_name("EPIC_100_train.csv") == "train"
    assert split_from_name("EPIC_100_test_timestamps.csv") == "test"
    assert split_from_name("mine.csv") is None
