"""pisa-infer's inputs: image files, folders of images (frames included) and video files, as one stream of
pictures to detect in.

A video is read frame by frame with OpenCV (any container and codec its FFmpeg reads); a folder of
frames is a folder of images (data/images.py), in file-name order. Each picture comes out as a
``Picture``: an image file's path, or a video frame as an array (BGR, as OpenCV and mmdet's
``inference_detector`` take it) with the video and the frame number.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pisa_train.data.images import find_images
from pisa_train.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass(frozen=True)
class Video:
    path: Path
    fps: float
    frames: int  # as the container says; counted while reading where it says nothing
    width: int
    height: int


@dataclass(frozen=True)
class Picture:
    image: Any  # an image file's path, or a video frame (numpy array, BGR)
    file_name: str  # the image file, or the video
    video: Video | None = None
    frame: int | None = None  # the frame's number in the video, from 0


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _unreadable(path: Path, why: str) -> DataError:
    return DataError(f"video {path} cannot be read ({why}); give a video file that OpenCV's FFmpeg reads "
                     f"(mp4/H.264, avi, mkv, webm), or its frames as images in a folder")


def open_video(path: Path) -> Video:
    """A video's frame rate, frame count and size; a DataError if OpenCV cannot read a frame of it."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise _unreadable(path, "not a video OpenCV can open")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise _unreadable(path, "no frame could be decoded")
        fps = capture.get(cv2.CAP_PROP_FPS)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if not fps or fps <= 0 or fps != fps:  # NaN or 0: containers without a rate; 25 is PAL's, a guess
        fps = 25.0
    return Video(path, float(fps), max(frames, 0), int(frame.shape[1]), int(frame.shape[0]))


def find_media(inputs) -> list[Path | Video]:
    """The inputs in order: image files (folders expanded, data/images.py) and videos (opened, so that an
    unreadable one is refused before the model loads)."""
    found: list[Path | Video] = []
    for item in map(Path, inputs):
        if item.is_file() and is_video(item):
            found.append(open_video(item))
        else:
            found.extend(find_images([item]))
    return found


def describe_media(media: list[Path | Video]) -> str:
    """``12 images and 1 video (48 frames)``."""
    videos = [item for item in media if isinstance(item, Video)]
    images = len(media) - len(videos)
    parts = [f"{images} images"] if images or not videos else []
    if videos:
        parts.append(f"{len(videos)} video{'s' if len(videos) > 1 else ''} "
                     f"({sum(video.frames for video in videos)} frames)")
    return " and ".join(parts)


def media_unit(media: list[Path | Video]) -> str:
    """What a progress bar counts: images, or images and frames."""
    return "images and frames" if any(isinstance(item, Video) for item in media) else "images"


def picture_count(media: list[Path | Video]) -> int:
    return sum(item.frames if isinstance(item, Video) else 1 for item in media)


def pictures(media: list[Path | Video]) -> Iterator[Picture]:
    """Every image, and every frame of every video, in order."""
    for item in media:
        if isinstance(item, Video):
            yield from video_frames(item)
        else:
            yield Picture(item, str(item))


def video_frames(video: Video) -> Iterator[Picture]:
    import cv2

    capture = cv2.VideoCapture(str(video.path))
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield Picture(frame, str(video.path), video, index)
            index += 1
    finally:
        capture.release()
