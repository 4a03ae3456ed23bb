# Builds inference/testdata/tiny.onnx: a deterministic stand-in backbone with the
# default bundle's interface (input "image" [N,3,128,128], output "features" [N,16]).
import torch, torch.nn as nn
torch.manual_seed(1)
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.fc = nn.Linear(8, 16)
    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x)
m = Tiny().eval()
x = torch.randn(2, 3, 128, 128)
torch.onnx.export(m, x, "tiny.onnx", input_names=["image"], output_names=["features"],
                  dynamic_axes={"image": {0: "N"}, "features": {0: "N"}}, opset_version=13)
# Reference output on a fixed input for the Go test.
import json
inp = torch.linspace(-1, 1, 3*128*128).reshape(1, 3, 128, 128)
print(json.dumps(m(inp).detach().numpy().ravel().tolist()))
