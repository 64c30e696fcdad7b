from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompareFacesRequest(_message.Message):
    __slots__ = ("channel", "reference", "file1", "file2", "threshold", "quality_filter")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FILE1_FIELD_NUMBER: _ClassVar[int]
    FILE2_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FILTER_FIELD_NUMBER: _ClassVar[int]
    channel: str
    reference: str
    file1: bytes
    file2: bytes
    threshold: float
    quality_filter: str
    def __init__(self, channel: _Optional[str] = ..., reference: _Optional[str] = ..., file1: _Optional[bytes] = ..., file2: _Optional[bytes] = ..., threshold: _Optional[float] = ..., quality_filter: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class QualityComponents(_message.Message):
    __slots__ = ("size", "sharpness", "pose", "illumination", "occlusion", "eyes", "presence")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    ILLUMINATION_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    EYES_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    size: float
    sharpness: float
    pose: float
    illumination: float
    occlusion: float
    eyes: float
    presence: float
    def __init__(self, size: _Optional[float] = ..., sharpness: _Optional[float] = ..., pose: _Optional[float] = ..., illumination: _Optional[float] = ..., occlusion: _Optional[float] = ..., eyes: _Optional[float] = ..., presence: _Optional[float] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "landmark_68", "eye_dist", "face_luminance", "face_occlusion", "face_quality", "left_eye_closed", "right_eye_closed", "mouth_opened", "pitch", "yaw", "roll", "faces_found", "detection_score", "orientation_correction", "quality_components")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    LANDMARK_68_FIELD_NUMBER: _ClassVar[int]
    EYE_DIST_FIELD_NUMBER: _ClassVar[int]
    FACE_LUMINANCE_FIELD_NUMBER: _ClassVar[int]
    FACE_OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    FACE_QUALITY_FIELD_NUMBER: _ClassVar[int]
    LEFT_EYE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    RIGHT_EYE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    MOUTH_OPENED_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    YAW_FIELD_NUMBER: _ClassVar[int]
    ROLL_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    x1: int
    y1: int
    x2: int
    y2: int
    landmark_68: _containers.RepeatedCompositeFieldContainer[Point]
    eye_dist: float
    face_luminance: float
    face_occlusion: float
    face_quality: float
    left_eye_closed: float
    right_eye_closed: float
    mouth_opened: float
    pitch: float
    yaw: float
    roll: float
    faces_found: int
    detection_score: float
    orientation_correction: int
    quality_components: QualityComponents
    def __init__(self, x1: _Optional[int] = ..., y1: _Optional[int] = ..., x2: _Optional[int] = ..., y2: _Optional[int] = ..., landmark_68: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., eye_dist: _Optional[float] = ..., face_luminance: _Optional[float] = ..., face_occlusion: _Optional[float] = ..., face_quality: _Optional[float] = ..., left_eye_closed: _Optional[float] = ..., right_eye_closed: _Optional[float] = ..., mouth_opened: _Optional[float] = ..., pitch: _Optional[float] = ..., yaw: _Optional[float] = ..., roll: _Optional[float] = ..., faces_found: _Optional[int] = ..., detection_score: _Optional[float] = ..., orientation_correction: _Optional[int] = ..., quality_components: _Optional[_Union[QualityComponents, _Mapping]] = ...) -> None: ...

class CompareFacesResponse(_message.Message):
    __slots__ = ("id", "reference", "channel", "compare_result", "compare_similarity", "created", "face1", "face2", "threshold", "quality_filter")
    ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RESULT_FIELD_NUMBER: _ClassVar[int]
    COMPARE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FACE1_FIELD_NUMBER: _ClassVar[int]
    FACE2_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FILTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    reference: str
    channel: str
    compare_result: str
    compare_similarity: float
    created: str
    face1: Face
    face2: Face
    threshold: float
    quality_filter: str
    def __init__(self, id: _Optional[str] = ..., reference: _Optional[str] = ..., channel: _Optional[str] = ..., compare_result: _Optional[str] = ..., compare_similarity: _Optional[float] = ..., created: _Optional[str] = ..., face1: _Optional[_Union[Face, _Mapping]] = ..., face2: _Optional[_Union[Face, _Mapping]] = ..., threshold: _Optional[float] = ..., quality_filter: _Optional[str] = ...) -> None: ...

class Scan(_message.Message):
    __slots__ = ("id", "company_id", "created_date", "updated_date", "created_by_id", "updated_by_id", "elapsed_time", "compare_result", "compare_similarity", "sales_channel", "reference", "face1", "face2", "threshold", "quality_filter")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMPANY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_DATE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_DATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RESULT_FIELD_NUMBER: _ClassVar[int]
    COMPARE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SALES_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FACE1_FIELD_NUMBER: _ClassVar[int]
    FACE2_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FILTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    company_id: str
    created_date: str
    updated_date: str
    created_by_id: str
    updated_by_id: str
    elapsed_time: float
    compare_result: str
    compare_similarity: float
    sales_channel: str
    reference: str
    face1: Face
    face2: Face
    threshold: float
    quality_filter: str
    def __init__(self, id: _Optional[str] = ..., company_id: _Optional[str] = ..., created_date: _Optional[str] = ..., updated_date: _Optional[str] = ..., created_by_id: _Optional[str] = ..., updated_by_id: _Optional[str] = ..., elapsed_time: _Optional[float] = ..., compare_result: _Optional[str] = ..., compare_similarity: _Optional[float] = ..., sales_channel: _Optional[str] = ..., reference: _Optional[str] = ..., face1: _Optional[_Union[Face, _Mapping]] = ..., face2: _Optional[_Union[Face, _Mapping]] = ..., threshold: _Optional[float] = ..., quality_filter: _Optional[str] = ...) -> None: ...

class GetScanRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListScansRequest(_message.Message):
    __slots__ = ("page", "size", "sort", "reference", "sales_channel", "compare_result", "created_from", "created_to")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SALES_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RESULT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_FIELD_NUMBER: _ClassVar[int]
    page: int
    size: int
    sort: _containers.RepeatedScalarFieldContainer[str]
    reference: str
    sales_channel: str
    compare_result: str
    created_from: str
    created_to: str
    def __init__(self, page: _Optional[int] = ..., size: _Optional[int] = ..., sort: _Optional[_Iterable[str]] = ..., reference: _Optional[str] = ..., sales_channel: _Optional[str] = ..., compare_result: _Optional[str] = ..., created_from: _Optional[str] = ..., created_to: _Optional[str] = ...) -> None: ...

class PageSort(_message.Message):
    __slots__ = ("sorted", "unsorted", "empty")
    SORTED_FIELD_NUMBER: _ClassVar[int]
    UNSORTED_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    sorted: bool
    unsorted: bool
    empty: bool
    def __init__(self, sorted: _Optional[bool] = ..., unsorted: _Optional[bool] = ..., empty: _Optional[bool] = ...) -> None: ...

class ListScansResponse(_message.Message):
    __slots__ = ("content", "total_elements", "total_pages", "number", "size", "number_of_elements", "first", "last", "empty", "sort")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    content: _containers.RepeatedCompositeFieldContainer[Scan]
    total_elements: int
    total_pages: int
    number: int
    size: int
    number_of_elements: int
    first: bool
    last: bool
    empty: bool
    sort: PageSort
    def __init__(self, content: _Optional[_Iterable[_Union[Scan, _Mapping]]] = ..., total_elements: _Optional[int] = ..., total_pages: _Optional[int] = ..., number: _Optional[int] = ..., size: _Optional[int] = ..., number_of_elements: _Optional[int] = ..., first: _Optional[bool] = ..., last: _Optional[bool] = ..., empty: _Optional[bool] = ..., sort: _Optional[_Union[PageSort, _Mapping]] = ...) -> None: ...

class UpdateScanRequest(_message.Message):
    __slots__ = ("id", "compare_result", "compare_similarity", "sales_channel", "reference")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RESULT_FIELD_NUMBER: _ClassVar[int]
    COMPARE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    SALES_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    compare_result: str
    compare_similarity: float
    sales_channel: str
    reference: str
    def __init__(self, id: _Optional[str] = ..., compare_result: _Optional[str] = ..., compare_similarity: _Optional[float] = ..., sales_channel: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class DeleteScanRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteScanResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
