package inference

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// rawSafetensors assembles a file from a literal header and data buffer, so
// that tests can say exactly what is wrong with it.
func rawSafetensors(header string, data []byte) []byte {
	out := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(out, uint64(len(header)))
	out = append(out, header...)
	return append(out, data...)
}

func TestSafetensorsRoundTrip(t *testing.T) {
	tensors := map[string]Tensor{
		"w":      F32Tensor([]int{2, 3}, []float32{1, 2, 3, 4, 5, -6.5}),
		"b":      F32Tensor([]int{3}, []float32{0.1, 0.2, 0.3}),
		"scalar": F32Tensor(nil, []float32{42}),
		"empty":  F32Tensor([]int{0, 4}, nil),
	}
	data, err := EncodeSafetensors(tensors, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	if hl := binary.LittleEndian.Uint64(data); hl%8 != 0 {
		t.Errorf("header length %d is not padded to 8", hl)
	}
	st, err := ParseSafetensors(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Names(); !reflect.DeepEqual(got, []string{"b", "empty", "scalar", "w"}) {
		t.Errorf("names = %v", got)
	}
	if st.Metadata["format"] != "pt" {
		t.Errorf("metadata = %v", st.Metadata)
	}
	w, err := st.Tensors["w"].Float32s()
	if err != nil || !reflect.DeepEqual(w, []float32{1, 2, 3, 4, 5, -6.5}) || !reflect.DeepEqual(st.Tensors["w"].Shape, []int{2, 3}) {
		t.Errorf("w = %v %v, %v", w, st.Tensors["w"].Shape, err)
	}
	if s, _ := st.Tensors["scalar"].Float32s(); len(s) != 1 || s[0] != 42 {
		t.Errorf("scalar = %v", s)
	}
	p := filepath.Join(t.TempDir(), "t.safetensors")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSafetensorsFile(p, int64(len(data))); err != nil {
		t.Errorf("ReadSafetensorsFile: %v", err)
	}
	if _, err := ReadSafetensorsFile(p, int64(len(data)-1)); !errors.Is(err, ErrSafetensors) {
		t.Errorf("ReadSafetensorsFile over the limit: %v", err)
	}
}

// TestSafetensorsFromPython parses bytes as the safetensors Python package
// writes them (header padded with spaces, __metadata__ first), typed in by
// hand from the format description.
func TestSafetensorsFromPython(t *testing.T) {
	header := `{"__metadata__":{"format":"pt"},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	header += strings.Repeat(" ", (8-len(header)%8)%8)
	data := make([]byte, 8)
	binary.LittleEndian.PutUint32(data, math.Float32bits(1.5))
	binary.LittleEndian.PutUint32(data[4:], math.Float32bits(-2))
	st, err := ParseSafetensors(rawSafetensors(header, data))
	if err != nil {
		t.Fatal(err)
	}
	v, err := st.Tensors["fc1.bias"].Float32s()
	if err != nil || !reflect.DeepEqual(v, []float32{1.5, -2}) {
		t.Errorf("fc1.bias = %v, %v", v, err)
	}
}

func TestSafetensorsRejects(t *testing.T) {
	eight := make([]byte, 8)
	cases := []struct {
		name    string
		data    []byte
		mention string
	}{
		{"empty file", nil, "shorter than"},
		{"header length past the end", append(binary.LittleEndian.AppendUint64(nil, 100), `{}`...), "past the end"},
		{"header length huge", binary.LittleEndian.AppendUint64(nil, 1<<62), "outside"},
		{"header not an object", rawSafetensors(`[1, 2]  `, nil), "'{'"},
		{"header bad JSON", rawSafetensors(`{"a":`, nil), "header"},
		{"trailing JSON", rawSafetensors(`{} {}`, nil), "after the JSON"},
		{"duplicate tensor", rawSafetensors(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, []byte{1, 2}), "duplicate"},
		{"unknown dtype", rawSafetensors(`{"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}`, eight), "F31"},
		{"unknown field", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"order":"C"}}`, eight), "order"},
		{"field in other case", rawSafetensors(`{"a":{"DType":"F32","shape":[2],"data_offsets":[0,8]}}`, eight), "DType"},
		{"entry not an object", rawSafetensors(`{"a":[1]}`, eight), "JSON object"},
		{"missing shape", rawSafetensors(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, eight), "required"},
		{"three offsets", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}`, eight), "[begin, end]"},
		{"negative dim", rawSafetensors(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, eight), "negative"},
		{"shape does not match bytes", rawSafetensors(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, eight), "needs 12 bytes"},
		{"dtype size does not match", rawSafetensors(`{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}`, eight), "needs 16 bytes"},
		{"offsets past the buffer", rawSafetensors(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, eight), "outside"},
		{"offsets reversed", rawSafetensors(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, eight), "outside"},
		{"overflowing shape", rawSafetensors(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}`, eight), "more bytes"},
		{"overlap", rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, eight), "overlaps"},
		{"gap", rawSafetensors(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, eight), "gap"},
		{"trailing bytes", rawSafetensors(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, eight), "cover 4"},
		{"metadata not strings", rawSafetensors(`{"__metadata__":{"n":1}}`, nil), "__metadata__"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSafetensors(tc.data)
			if !errors.Is(err, ErrSafetensors) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("ParseSafetensors: %v, want ErrSafetensors mentioning %q", err, tc.mention)
			}
		})
	}
}

func TestFloat16(t *testing.T) {
	cases := map[uint16]float32{
		0x0000: 0, 0x3c00: 1, 0xc000: -2, 0x7bff: 65504, 0x0001: 5.960464477539063e-08,
		0x3555: 0.333251953125, 0x7c00: float32(math.Inf(1)), 0xfc00: float32(math.Inf(-1)),
	}
	for h, want := range cases {
		if got := float16ToFloat32(h); got != want {
			t.Errorf("f16 %#04x = %v, want %v", h, got, want)
		}
	}
	if got := float16ToFloat32(0x7e00); !math.IsNaN(float64(got)) {
		t.Errorf("f16 NaN = %v", got)
	}
	if got := float16ToFloat32(0x8000); got != 0 || !math.Signbit(float64(got)) {
		t.Errorf("f16 -0 = %v", got)
	}
}

func FuzzSafetensors(f *testing.F) {
	seeds := [][]byte{
		rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)),
		rawSafetensors(`{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[],"data_offsets":[4,6]}}`, make([]byte, 6)),
		rawSafetensors(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)),
		rawSafetensors(`{"a":{"dtype":"F64","shape":[0,7],"data_offsets":[0,0]}}`, nil),
		binary.LittleEndian.AppendUint64(nil, 1<<63),
		{},
	}
	if data, err := EncodeSafetensors(map[string]Tensor{
		HeadFC1Weight: F32Tensor([]int{3, 4}, make([]float32, 12)),
		HeadFC1Bias:   F32Tensor([]int{3}, []float32{1, 2, 3}),
	}, map[string]string{"format": "pt"}); err == nil {
		seeds = append(seeds, data)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseSafetensors(data)
		if err != nil {
			if !errors.Is(err, ErrSafetensors) {
				t.Fatalf("error does not wrap ErrSafetensors: %v", err)
			}
			return
		}
		for name, tn := range st.Tensors {
			if len(tn.Data) != tn.NumElements()*dtypeSize[tn.DType] {
				t.Fatalf("%s: %d bytes for shape %v of %s", name, len(tn.Data), tn.Shape, tn.DType)
			}
			if _, ok := map[string]bool{"F32": true, "F64": true, "F16": true, "BF16": true}[tn.DType]; ok {
				v, err := tn.Float32s()
				if err == nil && len(v) != tn.NumElements() {
					t.Fatalf("%s: %d values for %d elements", name, len(v), tn.NumElements())
				}
			}
		}
		// What was accepted re-encodes to a file that parses to the same
		// tensors.
		again, err := EncodeSafetensors(st.Tensors, st.Metadata)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		st2, err := ParseSafetensors(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if len(st2.Tensors) != len(st.Tensors) {
			t.Fatalf("re-parse: %d tensors, want %d", len(st2.Tensors), len(st.Tensors))
		}
		for name, tn := range st.Tensors {
			t2 := st2.Tensors[name]
			if t2.DType != tn.DType || !reflect.DeepEqual(t2.Shape, tn.Shape) || string(t2.Data) != string(tn.Data) {
				t.Fatalf("%s changed through re-encoding", name)
			}
		}
	})
}
