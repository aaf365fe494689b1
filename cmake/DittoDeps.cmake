# Finds LibTorch (PyPI's torch wheel or a LibTorch archive), MPI, Boost and nlohmann-json, and
# defines ditto_torch_pch: the one precompiled header every LibTorch translation unit reuses.

if(NOT Torch_DIR AND NOT CMAKE_PREFIX_PATH)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_torch_prefix)
      list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
    endif()
  endif()
endif()

if(DITTO_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  # Hopper first; the CPU CI only compiles and links.
  if(NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "9.0")
  endif()
  find_package(CUDAToolkit REQUIRED)
endif()

find_package(Torch REQUIRED)
if(NOT DITTO_CUDA)
  message(STATUS "ditto: DITTO_CUDA=OFF, building without ditto's CUDA parts")
endif()

find_package(MPI REQUIRED COMPONENTS CXX)
find_package(Boost REQUIRED COMPONENTS program_options)
find_package(nlohmann_json 3 REQUIRED)
find_package(Threads REQUIRED)

# LibTorch's own flags (ABI define) on every target that uses it.
add_library(ditto_torch INTERFACE)
target_link_libraries(ditto_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(ditto_torch INTERFACE ${TORCH_INCLUDE_DIRS})
target_compile_options(ditto_torch INTERFACE ${TORCH_CXX_FLAGS})
target_compile_definitions(ditto_torch INTERFACE $<$<BOOL:${DITTO_CUDA}>:DITTO_CUDA=1>)
set_target_properties(ditto_torch PROPERTIES EXPORT_NAME torch)

# Where the loader finds the CUDA libraries LibTorch links (the wheel's nvidia/* folders or
# /usr/local/cuda); baked into every executable's RUNPATH so no LD_LIBRARY_PATH is needed.
set(_ditto_rpath "")
foreach(_lib ${TORCH_LIBRARIES})
  if(EXISTS "${_lib}")
    get_filename_component(_dir "${_lib}" DIRECTORY)
    list(APPEND _ditto_rpath "${_dir}")
  endif()
endforeach()
list(APPEND _ditto_rpath "${TORCH_INSTALL_PREFIX}/lib")
if(DITTO_CUDA OR EXISTS /usr/local/cuda/lib64)
  list(APPEND _ditto_rpath "/usr/local/cuda/lib64")
endif()
list(REMOVE_DUPLICATES _ditto_rpath)
set(CMAKE_BUILD_RPATH "${_ditto_rpath}" CACHE INTERNAL "")
set(CMAKE_INSTALL_RPATH "${_ditto_rpath}" CACHE INTERNAL "")
# Programs built against an installed ditto (find_package) get the same search path.
foreach(_dir ${_ditto_rpath})
  target_link_options(ditto_torch INTERFACE "LINKER:-rpath,${_dir}")
endforeach()

add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wno-unused-parameter>")

# One precompiled header for all LibTorch translation units.
add_library(ditto_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch_anchor.cpp)
target_link_libraries(ditto_torch_pch PUBLIC ditto_torch)
target_precompile_headers(ditto_torch_pch PUBLIC ${PROJECT_SOURCE_DIR}/model/torch_pch.h)

function(ditto_use_pch target)
  target_precompile_headers(${target} REUSE_FROM ditto_torch_pch)
endfunction()

# A ditto library: static, its headers included as "folder/name.h" from the source tree (and from
# PREFIX/include once installed), the shared precompiled header, exported as ditto::<export_name>.
set(DITTO_EXPORTED_LIBRARIES "" CACHE INTERNAL "")
function(ditto_library name export_name)
  add_library(${name} STATIC ${ARGN})
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}> $<INSTALL_INTERFACE:include>)
  set_target_properties(${name} PROPERTIES EXPORT_NAME ${export_name})
  ditto_use_pch(${name})
  set(DITTO_EXPORTED_LIBRARIES ${DITTO_EXPORTED_LIBRARIES} ${name} CACHE INTERNAL "")
endfunction()
