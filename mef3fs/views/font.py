"""A 5x7 pixel font for printable ASCII, drawn into numpy images (labels of preview.png).

Each glyph is 5 columns of 8 bits (bit 0 the top row, the last for
descenders), the classic character-LCD layout; a character outside ASCII is
drawn as '?'. Cells are 6 x 9 pixels (a blank column and row between
characters).
"""

from __future__ import annotations

import numpy as np

CELL_W, CELL_H = 6, 9

_GLYPHS = bytes.fromhex(
    "0000000000" "00005f0000" "0007000700" "147f147f14" "242a7f2a12" "2313086462" "3649552250"  # space ! " # $ % &
    "0005030000" "001c224100" "0041221c00" "082a1c2a08" "08083e0808" "0050300000" "0808080808"  # ' ( ) * + , -
    "0060600000" "2010080402" "3e5149453e" "00427f4000" "4261514946" "2141454b31" "1814127f10"  # . / 0 1 2 3 4
    "2745454539" "3c4a494930" "0171090503" "3649494936" "064949291e" "0036360000" "0056360000"  # 5 6 7 8 9 : ;
    "0814224100" "1414141414" "0041221408" "0201510906" "324979413e" "7e1111117e" "7f49494936"  # < = > ? @ A B
    "3e41414122" "7f4141221c" "7f49494941" "7f09090101" "3e41415132" "7f0808087f" "00417f4100"  # C D E F G H I
    "2040413f01" "7f08142241" "7f40404040" "7f020c027f" "7f0408107f" "3e4141413e" "7f09090906"  # J K L M N O P
    "3e4151215e" "7f09192946" "4649494931" "01017f0101" "3f4040403f" "1f2040201f" "3f4038403f"  # Q R S T U V W
    "6314081463" "0708700807" "6151494543" "007f414100" "0204081020" "0041417f00" "0402010204"  # X Y Z [ \\ ] ^
    "4040404040" "0001020400" "2054545478" "7f48444438" "3844444420" "384444487f" "3854545418"  # _ ` a b c d e
    "087e090102" "18a4a4a47c" "7f08040478" "00447d4000" "4080847d00" "7f10284400" "00417f4000"  # f g h i j k l
    "7c04180478" "7c08040478" "3844444438" "fc24242418" "18242418fc" "7c08040408" "4854545420"  # m n o p q r s
    "043f444020" "3c4040207c" "1c2040201c" "3c4030403c" "4428102844" "1ca0a0a07c" "4464544c44"  # t u v w x y z
    "0008364100" "00007f0000" "0041360800" "0201020402"                                        # { | } ~
)
_BITS = np.unpackbits(np.frombuffer(_GLYPHS, dtype=np.uint8).reshape(-1, 5, 1), axis=2,
                      bitorder="little").transpose(0, 2, 1).astype(bool)   # (glyph, row, col)


def text_width(text: str) -> int:
    return CELL_W * len(text)


def draw_text(img: np.ndarray, x: int, y: int, text: str, color: int) -> None:
    """Draw text with its top-left corner at (x, y); what falls outside img is clipped."""
    h, w = img.shape
    for c, ch in enumerate(text):
        code = ord(ch)
        glyph = _BITS[code - 32 if 32 <= code < 127 else ord("?") - 32]
        x0 = x + c * CELL_W
        if x0 >= w:
            break
        ys, xs = np.nonzero(glyph)
        ys, xs = ys + y, xs + x0
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        img[ys[keep], xs[keep]] = color


def fit(text: str, width: int) -> str:
    """text cut to at most `width` pixels, a trailing '~' where it was cut."""
    n = width // CELL_W
    return text if len(text) <= n else text[:max(0, n - 1)] + "~"
