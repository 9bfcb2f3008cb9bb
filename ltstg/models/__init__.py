"""Networks: backbones from timm's registry (backbones.py, cifar_resnet.py), the STG and its targets."""
