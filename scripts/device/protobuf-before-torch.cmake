# Included by scripts/device/cuda-check.sh through CMAKE_PROJECT_INCLUDE (right after
# project(), before find_package(Torch)). pip's Caffe2Config.cmake (libtorch built with
# its own protobuf) defines protobuf::libprotobuf as an alias of an empty INTERFACE
# library when no such target exists yet; FindProtobuf then keeps that alias, and
# everything linking protobuf::libprotobuf links nothing (steerd fails to link with
# "DSO missing from command line"). Finding protobuf first keeps the real target.
find_package(Protobuf REQUIRED)
