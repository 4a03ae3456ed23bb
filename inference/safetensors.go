package inference

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
)

// Safetensors format (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON header, then the data
// buffer. The header maps each tensor name to {"dtype", "shape",
// "data_offsets": [begin, end]} (offsets relative to the data buffer), plus
// an optional "__metadata__" string map. Like the reference implementation,
// the reader requires the tensors to tile the data buffer exactly: no gaps,
// no overlap, no trailing bytes.

// maxSafetensorsHeader is the reference implementation's limit.
const maxSafetensorsHeader = 100 << 20

// dtypeSize is the element size of every dtype the format defines.
var dtypeSize = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// Tensor is one tensor of a safetensors file. Data aliases the parsed
// buffer; it holds the raw little-endian elements.
type Tensor struct {
	DType string
	Shape []int
	Data  []byte
}

// NumElements is the product of Shape (1 for a scalar).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32s converts the tensor to float32. F32, F16, BF16 and F64 are
// accepted; F64 values outside float32's range are an error rather than a
// silent infinity.
func (t Tensor) Float32s() ([]float32, error) {
	n := t.NumElements()
	out := make([]float32, n)
	switch t.DType {
	case "F32":
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
	case "F64":
		for i := range out {
			v := math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:]))
			if !math.IsInf(v, 0) && !math.IsNaN(v) && math.Abs(v) > math.MaxFloat32 {
				return nil, fmt.Errorf("F64 element %d = %g overflows float32", i, v)
			}
			out[i] = float32(v)
		}
	case "F16":
		for i := range out {
			out[i] = float16ToFloat32(binary.LittleEndian.Uint16(t.Data[2*i:]))
		}
	case "BF16":
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[2*i:])) << 16)
		}
	default:
		return nil, fmt.Errorf("dtype %s is not a floating-point type (want F32, F16, BF16 or F64)", t.DType)
	}
	return out, nil
}

func float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	case frac == 0:
		return math.Float32frombits(sign)
	default: // subnormal half: value = frac * 2^-24, exact in float32
		v := float32(frac) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}

// Safetensors is a parsed safetensors file.
type Safetensors struct {
	Tensors  map[string]Tensor
	Metadata map[string]string
}

// Names returns the tensor names, sorted.
func (s *Safetensors) Names() []string {
	return slices.Sorted(maps.Keys(s.Tensors))
}

type stHeaderEntry struct {
	DType       *string   `json:"dtype"`
	Shape       *[]int64  `json:"shape"`
	DataOffsets *[]uint64 `json:"data_offsets"`
}

// ReadSafetensorsFile reads and parses a safetensors file of at most maxSize
// bytes (no limit when maxSize <= 0).
func ReadSafetensorsFile(path string, maxSize int64) (*Safetensors, error) {
	data, err := readFileLimit(path, maxSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSafetensors, err)
	}
	st, err := ParseSafetensors(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// ParseSafetensors validates and parses a safetensors file held in data.
// Tensor data aliases data. Errors wrap ErrSafetensors.
func ParseSafetensors(data []byte) (*Safetensors, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrSafetensors, fmt.Sprintf(format, args...))
	}
	if len(data) < 8 {
		return nil, bad("file is %d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n < 2 || n > maxSafetensorsHeader {
		return nil, bad("header length %d is outside 2..%d", n, maxSafetensorsHeader)
	}
	if n > uint64(len(data)-8) {
		return nil, bad("header length %d runs past the end of the %d-byte file", n, len(data))
	}
	header := data[8 : 8+n]
	buf := data[8+n:]
	if header[0] != '{' {
		return nil, bad("header does not start with '{'")
	}
	if err := checkJSONKeys(header); err != nil {
		return nil, bad("header: %v", err)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(header))
	if err := dec.Decode(&raw); err != nil {
		return nil, bad("header: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("header: data after the JSON object")
	}
	st := &Safetensors{Tensors: make(map[string]Tensor, len(raw))}
	type span struct {
		name       string
		begin, end uint64
	}
	spans := make([]span, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &st.Metadata); err != nil {
				return nil, bad("__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(msg, &keys); err != nil || keys == nil {
			return nil, bad("tensor %q: entry must be a JSON object", name)
		}
		for k := range keys {
			// Exact spelling: encoding/json would also take "DType".
			if k != "dtype" && k != "shape" && k != "data_offsets" {
				return nil, bad("tensor %q: unknown field %q", name, k)
			}
		}
		var e stHeaderEntry
		d := json.NewDecoder(bytes.NewReader(msg))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			return nil, bad("tensor %q: %v", name, err)
		}
		if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
			return nil, bad("tensor %q: dtype, shape and data_offsets are required", name)
		}
		size, ok := dtypeSize[*e.DType]
		if !ok {
			return nil, bad("tensor %q: unknown dtype %q", name, *e.DType)
		}
		offs := *e.DataOffsets
		if len(offs) != 2 {
			return nil, bad("tensor %q: data_offsets must be [begin, end], got %d numbers", name, len(offs))
		}
		begin, end := offs[0], offs[1]
		if begin > end || end > uint64(len(buf)) {
			return nil, bad("tensor %q: data_offsets [%d, %d] outside the %d-byte data buffer", name, begin, end, len(buf))
		}
		shape := make([]int, len(*e.Shape))
		// The element count is bounded by the buffer length, so any shape
		// whose running product exceeds it is rejected before it can overflow.
		nbytes := uint64(size)
		for i, dim := range *e.Shape {
			if dim < 0 {
				return nil, bad("tensor %q: negative dimension %d", name, dim)
			}
			shape[i] = int(dim)
			if nbytes != 0 {
				if uint64(dim) > uint64(len(buf))/nbytes+1 {
					return nil, bad("tensor %q: shape %v needs more bytes than the file holds", name, *e.Shape)
				}
				nbytes *= uint64(dim)
			}
		}
		if nbytes != end-begin {
			return nil, bad("tensor %q: shape %v of %s needs %d bytes, data_offsets give %d", name, *e.Shape, *e.DType, nbytes, end-begin)
		}
		st.Tensors[name] = Tensor{DType: *e.DType, Shape: shape, Data: buf[begin:end:end]}
		spans = append(spans, span{name, begin, end})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos uint64
	for _, s := range spans {
		if s.begin < pos {
			return nil, bad("tensor %q overlaps the tensor before it (offset %d < %d)", s.name, s.begin, pos)
		}
		if s.begin > pos {
			return nil, bad("gap in the data buffer before tensor %q (offset %d, expected %d)", s.name, s.begin, pos)
		}
		pos = s.end
	}
	if pos != uint64(len(buf)) {
		return nil, bad("data buffer is %d bytes but the tensors cover %d", len(buf), pos)
	}
	return st, nil
}

// EncodeSafetensors writes tensors in the safetensors format, in name order,
// with the header padded by spaces to a multiple of 8 bytes as the reference
// implementation does.
func EncodeSafetensors(tensors map[string]Tensor, metadata map[string]string) ([]byte, error) {
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		if n == "__metadata__" {
			return nil, fmt.Errorf("%w: invalid tensor name %q", ErrSafetensors, n)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	header := make(map[string]any, len(names)+1)
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off uint64
	for _, n := range names {
		t := tensors[n]
		size, ok := dtypeSize[t.DType]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: unknown dtype %q", ErrSafetensors, n, t.DType)
		}
		if t.NumElements()*size != len(t.Data) {
			return nil, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, have %d", ErrSafetensors, n, t.Shape, t.DType, t.NumElements()*size, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		header[n] = map[string]any{"dtype": t.DType, "shape": shape, "data_offsets": []uint64{off, off + uint64(len(t.Data))}}
		off += uint64(len(t.Data))
	}
	h, err := json.Marshal(header)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSafetensors, err)
	}
	if pad := (8 - len(h)%8) % 8; pad > 0 {
		h = append(h, strings.Repeat(" ", pad)...)
	}
	out := make([]byte, 8, 8+len(h)+int(off))
	binary.LittleEndian.PutUint64(out, uint64(len(h)))
	out = append(out, h...)
	for _, n := range names {
		out = append(out, tensors[n].Data...)
	}
	return out, nil
}

// F32Tensor builds an F32 tensor from values; a helper for writing heads and
// test fixtures.
func F32Tensor(shape []int, values []float32) Tensor {
	data := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return Tensor{DType: "F32", Shape: append([]int(nil), shape...), Data: data}
}

// readFileLimit reads a regular file of at most maxSize bytes (no limit when
// maxSize <= 0).
func readFileLimit(path string, maxSize int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if maxSize > 0 && st.Size() > maxSize {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d allowed", path, st.Size(), maxSize)
	}
	r := io.Reader(f)
	if maxSize > 0 {
		r = io.LimitReader(f, maxSize+1)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if maxSize > 0 && int64(len(data)) > maxSize {
		return nil, fmt.Errorf("%s grew past %d bytes while being read", path, maxSize)
	}
	return data, nil
}
